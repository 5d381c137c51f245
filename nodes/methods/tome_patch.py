"""ToMe's sampling-time updates (Hu et al., NeurIPS 2024) as a patch: a pure per-run controller over the contract's
ModelRunner (no ComfyUI import).

During the first steps it runs its own differentiable passes of the model (GradThroughInference lets autograd
through the loader's inference weights without copying them): the semantic-binding loss on the composite tokens,
then the entropy loss on the latent and every positive text row (the reference's order), then the sampler's call
with the updated rows and latent. The text rows' update persists for the rest of the sampling, as in the
reference; the latent's update changes only that step's model input (the reference steps from the un-updated
latent with the noise predicted at the updated one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import tome
from .contract import MethodError, ModelCall
from .settings import Setting

# The reference's maps: diffusers up_blocks.0.attentions.1.transformer_blocks.{1,2,3}.attn2 = ComfyUI's output
# block 1, transformer blocks 1-3 (32x32 at 1024x1024).
MAP_LAYERS = (("output", 1, 1), ("output", 1, 2), ("output", 1, 3))
SIZE_EMBEDDING = 6 * 256  # SDXL's ADM vector is [pooled text, 6 Fourier size embeddings of 256]


LATENT_OPTIONS = ("main latent", "anchor latent (reference code)")
THRESHOLD_OPTIONS = ("step index (reference code)", "fraction of the schedule")
STEPS_FRACTION = Setting("steps_fraction", "float", 0.2, (
    "The updates run during this first fraction of the sampler's steps: {default} (the paper; 10 of 50). The "
    "reference demos use 0.14 and 0.1. 0 turns the node off. Fast: 0.1."), 0.0, 1.0, 0.01)
ENTROPY_ITERATIONS = Setting("entropy_iterations", "int", 6, (
    "Most entropy-loss updates per step (fewer if the loss falls under the reference's threshold). {default}: "
    "reference object-binding demo; 4: attribute demo; 0: off. Fast: 1."), 0, 20)
SEMANTIC_ITERATIONS = Setting("semantic_iterations", "int", 3, (
    "Semantic-binding updates of each composite token per step (reference: {default}). 0: off. Fast: 1."), 0, 10)
SEMANTIC_LR = Setting("semantic_lr", "float", 1e4, "Step size of the semantic-binding update (reference: {default}).",
                      0.0, 1e6, 100.0)
ENTROPY_STEP = Setting("entropy_step", "float", 3.0, (
    "Entropy step size at the first step, falling linearly to 0 at the last (reference: {default})."), 0.0, 20.0, 0.1)
POSE_PRIOR = Setting("pose_prior", "bool", False, (
    "The reference's optional layout prior for two groups: first subject left, second right. Off by default."))
SEMANTIC_LATENT = Setting("semantic_latent", "choice", LATENT_OPTIONS[0], (
    "The latent the semantic-binding loss predicts noise from: the sampling's own (default, as the paper describes "
    "it), or the reference code's separate per-anchor latent, advanced with inverted guidance (it looks unintended; "
    "for comparisons). Costs one more pass per step."), options=LATENT_OPTIONS)
THRESHOLD_SCHEDULE = Setting("threshold_schedule", "choice", THRESHOLD_OPTIONS[0], (
    "How a step picks its entry of the reference's entropy threshold table (written for steps 0-9 of 50): by its step "
    "index, as the reference code does at any step count (default), or by its fraction of the schedule (step 2 of 25 "
    "reads step 4's entry), which keeps each entry at the same point of the schedule with fewer or more steps. The "
    "two agree at 50 steps."), options=THRESHOLD_OPTIONS, optional=True)
SETTINGS = (STEPS_FRACTION, ENTROPY_ITERATIONS, SEMANTIC_ITERATIONS, SEMANTIC_LR, ENTROPY_STEP, POSE_PRIOR,
            SEMANTIC_LATENT, THRESHOLD_SCHEDULE)  # ToMe Semantic Binding's inputs after the binding


@dataclass(frozen=True)
class BindingSpec:
    """What ToMe Encode hands to the patch: the groups and every encoding the updates need."""

    groups: tuple[tome.Group, ...]
    merged: torch.Tensor  # [1, 77, D] the prompt with composite tokens (no end-token substitution)
    substituted: torch.Tensor | None  # the same with end-token substitution, None when it is off
    ets_start: float
    eot: int  # row of the end token
    anchors: torch.Tensor  # [G, 77, D] each group's anchor phrase, encoded alone
    family: str
    prompt: object = None  # the encoded prompt's tag (text.provenance.PromptTag): every positive entry carries it


@dataclass(frozen=True)
class Settings:
    window: float = STEPS_FRACTION.default
    entropy_iterations: int = ENTROPY_ITERATIONS.default
    semantic_iterations: int = SEMANTIC_ITERATIONS.default
    semantic_lr: float = SEMANTIC_LR.default
    scale_factor: float = ENTROPY_STEP.default
    pose_prior: bool = POSE_PRIOR.default
    anchor_latent: bool = False  # the reference code's separate latent for the semantic-binding loss
    threshold_by_fraction: bool = False  # the threshold table read at the step's fraction of 50 steps
    temperature: float = 0.5

    @property
    def updates_anything(self) -> bool:
        return self.window > 0 and (self.entropy_iterations > 0 or self.semantic_iterations > 0)


class Run:
    """One sampling run's ToMe state."""

    def __init__(self, spec: BindingSpec, settings: Settings, cfg: float, negative):
        self.spec, self.settings = spec, settings
        self.offload = False  # keep gradient passes' activations in CPU memory (set after an out-of-memory)
        self.stats = {"forward": 0, "backward": 0}  # auxiliary model passes in this sampling
        self.text = None  # [batch, 77, D] the positive rows as updated so far
        self.substituted = spec.substituted is not None and spec.ets_start <= 0
        self.done = set()  # optimized steps
        self.latent = {}  # step -> (model input it was computed for, updated model input)
        self.last = {}  # what the last optimized step measured (for tests and logging)
        self.progress = None  # the optimized step's progress bar (one tick per gradient pass)
        self.anchor_latent = None  # [batch * groups, ...] the reference code's per-anchor latents
        self.cfg, self.negative = cfg, negative  # the guider's, for advancing the anchor latents


def _rows_match(rows: torch.Tensor, reference: torch.Tensor | None) -> bool:
    if reference is None:
        return False
    rows = rows[:, :reference.shape[1]].float()
    return torch.allclose(rows, reference.to(rows).expand_as(rows), rtol=1e-3, atol=1e-4)


def _eps(sigma, x, denoised):
    return (x - denoised) / sigma.view(-1, *[1] * (x.dim() - 1))


class ToMePatch:
    """The controller: `model_call` wraps each model call of the sampling."""

    edits = True

    def __init__(self, spec: BindingSpec, settings: Settings):
        self.spec, self.settings = spec, settings

    def new_run(self, info: dict) -> Run:
        return Run(self.spec, self.settings, info.get("cfg", 1.0), info.get("negative"))

    def finish(self, run: Run, output):
        """After the run: drop the latents it kept (ToMe shows nothing)."""
        run.latent.clear()
        run.anchor_latent = run.negative = None
        return None

    def model_call(self, run: Run, call: ModelCall, model):
        spec, settings = self.spec, self.settings
        step, steps = call.need_step()
        rows = list(call.rows)
        context = model.context
        if context is not None and rows:  # follow ComfyUI's switch to the substituted conditioning
            seen = context[rows]
            if _rows_match(seen, spec.substituted) and not _rows_match(seen, spec.merged):
                if run.text is not None and not run.substituted:
                    run.text = run.text.clone()
                    run.text[:, spec.eot:] = spec.substituted[:, spec.eot:].to(run.text)
                run.substituted = True
            elif not _rows_match(seen, spec.merged):
                raise MethodError("binding", "the positive prompt the sampler sees is not the one from Leakless "
                                  "ToMe Encode.", "connect ToMe Encode's conditioning as the positive of the sampler "
                                  "that uses this model (its binding output goes to this node).")
        x = model.x
        if run.text is None:
            base = spec.substituted if run.substituted else spec.merged
            run.text = base.to(x.device, torch.float32).repeat(model.per, 1, 1)
        x_in = x
        if step < int(settings.window * steps + 0.5):  # the first 20% of 50 steps: 0..9
            if step not in run.done:
                if not run.done:
                    _check_size(model)
                run.done.add(step)
                run.latent[step] = (x[model.cond].clone(), _optimize(run, model, step, steps))
            before, after = run.latent.get(step, (None, None))
            if before is not None and torch.equal(before, x[model.cond]):  # first evaluation of the step
                x_in = after.to(x).repeat(len(model.flags), *[1] * (x.dim() - 1))
        if context is not None and rows:  # the positive rows as updated so far, tiled like ComfyUI tiles them
            context = context.clone()
            tiled = run.text.to(context).repeat(1, context.shape[1] // run.text.shape[1], 1)
            context[rows] = tiled.repeat(len(rows) // model.per, 1, 1)
        out = model.run(x_in, context)
        # the reference steps from the un-updated latent with the noise predicted at the updated one
        return out if x_in is x else out + (x - x_in)


def _check_size(model) -> None:
    """Refuses, before any gradient work, a latent too small for one-image passes of this UNet."""
    small = model.too_small_for_one_image()
    if small is None:
        return
    side, downsamplings = small
    h, w = model.x.shape[-2:]
    raise MethodError("model", f"the latent is {w * 8}x{h * 8} px; ToMe's one-image gradient passes through this "
                      f"UNet need its longer side to be at least {side} px (a group norm after {downsamplings} "
                      "downsampling(s) would see a single value).", f"use a width or height of {side} px or more "
                      f"(e.g. {side}x{side}), or bypass this node at this size.")


def _with_gradient(run: Run, model, fn):
    """Runs a pass that is differentiated, one latent row at a time so memory does not grow with the batch or the
    groups. If the device runs out of memory, the activations kept for the backward pass move to CPU memory
    (torch's save_on_cpu) from then on: slower, and the GPU then holds about the weights and one layer's
    activations (counted on the meta device; not yet run on a GPU)."""
    if not run.offload:
        try:
            return fn()
        except torch.OutOfMemoryError:
            model.free_memory()
            run.offload = True
            logging.warning("Leakless ToMe: out of GPU memory in a gradient pass; keeping its activations in CPU "
                            "memory from now on (slower)")
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return fn()


def _semantic_update(run: Run, model, x, text, step: int):
    """L_sem: each composite token alone must predict the noise its anchor phrase predicts; 'semantic_iterations'
    gradient steps of size semantic_lr on the composite rows, one (sample, group) row per gradient pass."""
    spec, s = run.spec, run.settings
    groups, batch = len(spec.groups), x.shape[0]
    nouns = [g.noun[0] for g in spec.groups]
    samples = [b for b in range(batch) for _ in range(groups)]  # row r = sample r // G, group r % G
    sigma = model.sigma[model.cond][samples]
    xs = x.repeat_interleave(groups, 0)
    if s.anchor_latent:
        if run.anchor_latent is None:  # the reference starts every anchor latent from the initial latent
            run.anchor_latent = xs.detach().clone()
        xs = run.anchor_latent
    with torch.no_grad():  # the anchors' noise, once per step for every iteration (no activations are kept)
        anchors = spec.anchors.to(text).repeat(batch, 1, 1)
        target = _eps(sigma, xs, model.denoise(xs, anchors, samples, SIZE_EMBEDDING))
    run.stats["forward"] += 1
    token = text[:, nouns].detach().reshape(batch * groups, 1, -1)
    for _ in range(s.semantic_iterations):
        rows = []
        for r, b in enumerate(samples):
            model.check_interrupt()

            def row_grad(r=r, b=b, token=token):
                leaf = token[r:r + 1].clone().requires_grad_()
                pred = _eps(sigma[r:r + 1], xs[r:r + 1], model.denoise(xs[r:r + 1], leaf, [b], SIZE_EMBEDDING))
                grad, = torch.autograd.grad(((pred - target[r:r + 1]) ** 2).mean(), [leaf])
                return grad

            rows.append(token[r:r + 1] - s.semantic_lr * _with_gradient(run, model, row_grad))
            run.progress.update(1)
            run.stats["forward"] += 1
            run.stats["backward"] += 1
        token = torch.cat(rows).detach()
    if s.anchor_latent:
        _advance_anchor_latent(run, model, xs, sigma, target, samples, step)
    text = text.clone()
    text[:, nouns] = token.reshape(batch, groups, -1)
    return text


def _advance_anchor_latent(run: Run, model, xs, sigma, anchor_eps, samples, step: int):
    """The reference code's anchor-latent step: an Euler step of the *scaled* latent with the inverted guidance
    null + cfg * (null - anchor), the scaling re-applied every step (it compounds, as in the code)."""
    if run.negative is None:
        raise MethodError("semantic_latent", "'anchor latent' needs the sampler's negative prompt.",
                          "sample with KSampler, or SamplerCustomAdvanced with CFGGuider; or use the main latent.")
    negative = run.negative.to(xs).expand(xs.shape[0], -1, -1)
    with torch.no_grad():
        null = _eps(sigma, xs, model.denoise(xs, negative, samples, SIZE_EMBEDDING))
    run.stats["forward"] += 1
    c_in = model.input_scale(sigma, xs)
    delta = (model.sample_sigmas[step + 1] - model.sample_sigmas[step]).to(xs)
    run.anchor_latent = (xs * c_in + delta * (null + run.cfg * (null - anchor_eps))).detach()


def _entropy_update(run: Run, model, x, text, step, steps, c_in):
    """L_ent on the averaged cross-attention maps: update the model input (x 0.5 eta) and every positive text row
    (x eta) until the loss is under the step's threshold or the iteration cap; each sample on its own."""
    spec, s = run.spec, run.settings
    nouns = [g.noun[0] for g in spec.groups]
    eta = tome.step_size(step, steps, s.scale_factor)
    threshold = tome.entropy_threshold(step, steps, len(nouns), s.threshold_by_fraction)
    xs, texts, losses = list(x.detach()), list(text.detach()), []
    for b in range(x.shape[0]):
        history = []
        for _ in range(s.entropy_iterations):  # the reference's cap (its two caps, before and after t = 900, agree)
            model.check_interrupt()

            def sample_grad(b=b):
                x_leaf = xs[b][None].clone().requires_grad_()
                text_leaf = texts[b][None].clone().requires_grad_()
                maps = model.cross_attention_maps(x_leaf, text_leaf, [b], MAP_LAYERS, SIZE_EMBEDDING)
                h, w = maps[0][1]
                mean = torch.stack([m for m, _ in maps]).mean(0).view(1, h, w, -1)
                loss = tome.entropy_loss(mean, nouns, spec.eot, s.temperature)
                if s.pose_prior:
                    loss = loss + tome.pose_loss(mean, nouns, spec.eot, s.temperature)
                if float(loss.detach()) == 0:
                    return loss.detach(), None, None
                return (loss.detach(), *torch.autograd.grad(loss.sum(), [x_leaf, text_leaf]))

            loss, gx, gt = _with_gradient(run, model, sample_grad)
            run.progress.update(1)
            run.stats["forward"] += 1
            history.append(round(float(loss), 4))
            if gx is not None:
                run.stats["backward"] += 1
                # the reference steps the *scaled* model input: d/dx_in = d/dx / c_in, and x = x_in / c_in
                xs[b] = (xs[b] - 0.5 * eta * gx[0] / c_in[b] ** 2).detach()
                texts[b] = (texts[b] - eta * gt[0]).detach()
            if float(loss) < threshold:
                break
        losses.append(history)
    run.last.update(entropy=losses, threshold=threshold, step_size=eta)
    return torch.stack(xs), torch.stack(texts)


def _optimize(run: Run, model, step: int, steps: int):
    """One optimized step: L_sem on the composite tokens, then L_ent on the latent and the text rows (reference
    order). Returns the updated latent rows (this step's model input only) and stores the text rows."""
    s = run.settings
    x = model.x[model.cond].detach()
    sigma = model.sigma[model.cond]
    c_in = model.input_scale(sigma, x)
    passes = x.shape[0] * (s.semantic_iterations * len(run.spec.groups) + s.entropy_iterations)
    run.progress = model.progress(passes)  # one tick per gradient pass
    with torch.inference_mode(False), torch.enable_grad(), tome.GradThroughInference():
        text = run.text.clone()
        if s.semantic_iterations:
            text = _semantic_update(run, model, x, text, step)
        if s.entropy_iterations:
            x, text = _entropy_update(run, model, x, text, step, steps, c_in)
    run.progress.update_absolute(passes)  # entropy loops that stopped under the threshold
    run.last.update(step=step, text_change=float((text - run.text).abs().max()),
                    latent_change=float((x - model.x[model.cond]).abs().max()))
    logging.debug("Leakless ToMe step %d: %s", step, run.last)
    with torch.inference_mode():
        run.text = text.clone()
        return x.clone()
