"""ToMe semantic binding nodes (SDXL): ToMe Encode (composite tokens, end-token substitution) and ToMe Semantic
Binding (the entropy and semantic-binding updates during the first steps of sampling).

Not ComfyUI's TomePatchModel, which merges image tokens for speed: this is Hu et al.'s token merging of *prompt*
tokens for attribute binding. The patch is an APPLY_MODEL wrapper on a clone of the MODEL. In an optimized step it
runs its own differentiable passes of the model (GradThroughInference lets autograd through the loader's inference
weights without copying them), updates the positive prompt's rows and the step's model input, then runs the
sampler's call with them. The update of the text rows persists for the rest of the sampling, as in the reference.
That state belongs to one sampling run (nodes/run_state.py), never to the patched model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from . import provenance, run_state, tome
from .alignment import PhraseNotFoundError
from .clip_glue import align_clip, family_of
from .families import names
from .errors import LeaklessInputError, input_error
from .flow import SelectionError
from .sampling_glue import cond_rows, sigma_step
from .validation import check_inputs

BINDING = io.Custom("LEAKLESS_TOME_BINDING")
WRAPPER_KEY = "leakless_tome"
# The reference's maps: diffusers up_blocks.0.attentions.1.transformer_blocks.{1,2,3}.attn2 = ComfyUI's
# output block 1, transformer blocks 1-3 (32x32 at 1024x1024).
MAP_LAYERS = (("output", 1, 1), ("output", 1, 2), ("output", 1, 3))
LATENT_OPTIONS = ["main latent", "anchor latent (reference code)"]
THRESHOLD_OPTIONS = ["step index (reference code)", "fraction of the schedule"]
SIZE_EMBEDDING = 6 * 256  # SDXL's ADM vector is [pooled text, 6 Fourier size embeddings of 256]


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
    prompt: provenance.PromptTag | None = None  # the encoded prompt's tag: every positive entry must carry it


class ToMeEncode(io.ComfyNode):
    NAME = "Leakless ToMe Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessToMeEncode",
            display_name=cls.NAME,
            category="Leakless/tome",
            description=(
                "ToMe token merging for attribute binding (SDXL; SD1.5 merge only): encodes the prompt like "
                "CLIPTextEncode, then folds each group's attribute tokens into its noun ('cat: wearing sunglasses' "
                "-> one composite 'cat' token), so the dog does not get the cat's sunglasses. Optionally replaces "
                "the end tokens by those of a clean prompt. Not ComfyUI's TomePatchModel (a speed method)."),
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL CLIP (from the checkpoint). SD1.5 works for the merge."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip=(
                    "The prompt, one CLIP chunk (up to 75 tokens): 'a cat wearing sunglasses and a dog wearing a "
                    "hat'.")),
                io.String.Input("groups", multiline=True, default="", tooltip=(
                    "One group per line or ';': 'noun: attribute, attribute', each a phrase of the prompt "
                    "('cat: wearing sunglasses; dog: wearing a hat'); 'cat#2' for the second 'cat', '\"1984\"' for "
                    "a word that is a number. A repeated attribute without '#n' is the occurrence nearest its noun "
                    "(before it on a tie), never past another group's noun. Empty: the plain encoding, unchanged.")),
                io.Float.Input("noun_weight", default=tome.REFERENCE_NOUN_WEIGHT, min=0.0, max=3.0, step=0.05,
                               tooltip="Composite = noun_weight x noun rows + attribute_weight x attribute rows. "
                               "1.1 is the reference code's; 1.0 with attribute_weight 1.0 is the paper's plain "
                               "sum."),
                io.Float.Input("attribute_weight", default=tome.REFERENCE_ATTRIBUTE_WEIGHT, min=0.0, max=3.0,
                               step=0.05, tooltip="1.2 is the reference code's (see noun_weight)."),
                io.Float.Input("end_token_substitution", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "From this fraction of the sampling on, the end token and padding rows come from the clean "
                    "prompt, so they stop carrying the attributes. 0 = from the start (reference, object "
                    "binding); 1 = off (reference, attribute binding); in between uses ComfyUI's timestep "
                    "ranges, like ConditioningSetTimestepRange.")),
                io.String.Input("clean_prompt", default="", tooltip=(
                    "The prompt without attributes for end-token substitution. Empty: built from the groups' "
                    "nouns ('a cat and a dog').")),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning",
                                       tooltip="The merged conditioning: the sampler's positive prompt."),
                BINDING.Output("binding", display_name="binding", tooltip=(
                    "The groups and encodings for Leakless ToMe Semantic Binding (optional: the conditioning "
                    "alone is ToMe's merge + end-token substitution).")),
            ],
        )

    @classmethod
    def execute(cls, clip, text, groups, noun_weight, attribute_weight, end_token_substitution,
                clean_prompt) -> io.NodeOutput:
        check_inputs(cls, locals())
        alignment = align_clip(cls.NAME, clip, text)
        family = family_of(cls.NAME, alignment)
        if not family.tome:
            raise LeaklessInputError(cls.NAME, "clip", f"ToMe merges CLIP token rows of {names(lambda f: f.tome)}; "
                                     f"this is a CLIP for {family.name} ({alignment.rows.name}).", "use an SDXL "
                                     "checkpoint's CLIP; for leakage on other models use Leakless Leak Patch or "
                                     "DeLeaker.")
        family = family.id
        tokens = alignment.tokens
        conditioning, tag = provenance.tag_conditioning(cls.NAME, clip, tokens, text,
                                                        clip.encode_from_tokens_scheduled(tokens))
        try:
            specs = tome.parse_groups(groups)
            if not specs:
                return io.NodeOutput(conditioning, None)
            resolved = tuple(tome.resolve_groups(alignment, "l", specs))
        except (PhraseNotFoundError, SelectionError, tome.GroupError) as e:
            raise input_error(cls.NAME, "groups", e, "write 'noun: attribute, attribute' with words of the prompt, "
                              "one group per line, e.g. 'cat: wearing sunglasses; dog: wearing a hat'.") from None
        encoder = alignment.encoders["l"]
        if len(encoder.chunk_lengths) > 1:
            raise LeaklessInputError(cls.NAME, "text", f"the prompt is {encoder.length // 77} CLIP chunks; ToMe "
                                     "works on one (up to 75 tokens), as the reference does.", "shorten the prompt.")
        eot = next(t.position for t in encoder.tokens if t.kind == "eos")
        merged = [[tome.merge_tokens(c, resolved, noun_weight, attribute_weight), dict(m)] for c, m in conditioning]
        substituted = None
        if end_token_substitution < 1.0:
            clean = clean_prompt.strip() or tome.clean_prompt(resolved)
            clean_cond = clip.encode_from_tokens_scheduled(clip.tokenize(clean))[0][0]
            if clean_cond.shape[1] != merged[0][0].shape[1]:
                raise LeaklessInputError(cls.NAME, "clean_prompt", "the clean prompt is longer than one CLIP "
                                         "chunk.", "shorten it.")
            substituted = [[tome.substitute_end_tokens(c, clean_cond, eot), dict(m)] for c, m in merged]
        if substituted is None:
            out = merged
        elif end_token_substitution <= 0.0:
            out = substituted
        else:  # ComfyUI switches from one to the other at that point of the schedule
            out = [[c, {**m, "end_percent": end_token_substitution}] for c, m in merged] + \
                  [[c, {**m, "start_percent": end_token_substitution}] for c, m in substituted]
        anchors = torch.cat([clip.encode_from_tokens_scheduled(clip.tokenize(g.anchor))[0][0] for g in resolved])
        spec = BindingSpec(resolved, merged[0][0], None if substituted is None else substituted[0][0],
                           end_token_substitution, eot, anchors, family, tag)
        return io.NodeOutput(out, spec)


@dataclass(frozen=True)
class Settings:
    window: float = 0.2
    entropy_iterations: int = 6
    semantic_iterations: int = 3
    semantic_lr: float = 1e4
    scale_factor: float = 3.0
    pose_prior: bool = False
    anchor_latent: bool = False  # the reference code's separate latent for the semantic-binding loss
    threshold_by_fraction: bool = False  # the threshold table read at the step's fraction of 50 steps
    temperature: float = 0.5

    @property
    def updates_anything(self) -> bool:
        return self.window > 0 and (self.entropy_iterations > 0 or self.semantic_iterations > 0)


class _EnoughMaps(Exception):
    """Raised by the map recorder after the last layer the entropy loss reads: the rest of the forward pass
    cannot change the loss, so it is not run."""


class _Run:
    """State of one sampling run with the patched model: nodes/run_state.py makes a fresh one for every run."""

    def __init__(self, spec: BindingSpec, settings: Settings, guider):
        self.spec, self.settings = spec, settings
        self.offload = False  # keep gradient passes' activations in CPU memory (set after an out-of-memory)
        self.stats = {"forward": 0, "backward": 0}  # auxiliary model passes in this sampling
        self.text = None  # [batch, 77, D] the positive rows as updated so far
        self.substituted = spec.substituted is not None and spec.ets_start <= 0
        self.done = set()  # optimized steps
        self.latent = {}  # step -> (model input it was computed for, updated model input)
        self.last = {}  # what the last optimized step measured (for tests and logging)
        self.progress = None  # the optimized step's ComfyUI progress bar (one tick per gradient pass)
        self.anchor_latent = None  # [batch * groups, ...] the reference code's per-anchor latents
        self.cfg = float(getattr(guider, "cfg", 1.0))  # the guider's, for advancing the anchor latents
        negative = getattr(guider, "original_conds", {}).get("negative") or [{}]
        self.negative = negative[0].get("cross_attn")

    def release(self, output=None):
        """After the run: drop the latents it kept."""
        self.latent.clear()
        self.anchor_latent = self.negative = None


def _rows_match(rows: torch.Tensor, reference: torch.Tensor | None) -> bool:
    if reference is None:
        return False
    rows = rows[:, :reference.shape[1]].float()
    return torch.allclose(rows, reference.to(rows).expand_as(rows), rtol=1e-3, atol=1e-4)


def _record_maps(store: list, previous):
    def attn2(q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        store.append((tome.cross_attention_probs(q, k, extra_options["n_heads"]),
                      tuple(extra_options["activations_shape"][-2:])))
        if len(store) == len(MAP_LAYERS):
            raise _EnoughMaps
        if previous is not None:
            return previous(q, k, v, extra_options)
        return attention.optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options)

    return attn2


class _Sampling:
    """One model call's arguments, and passes of the model on chosen rows with chosen context."""

    def __init__(self, executor, x, t, c_concat, kwargs, transformer_options):
        self.executor, self.x, self.t, self.c_concat, self.kwargs = executor, x, t, c_concat, kwargs
        self.to = transformer_options
        flags = transformer_options.get("cond_or_uncond") or [0]
        self.per = x.shape[0] // len(flags)
        self.flags = flags
        first = flags.index(0) if 0 in flags else 0  # rows whose ADM vector carries the positive's size ids
        self.rows = slice(first * self.per, (first + 1) * self.per)

    def per_row(self, value, samples):
        """Rows of `value` (batch-first, like x) for the cond-chunk samples `samples`."""
        return value[self.rows][samples]

    def run(self, x, context, samples: list[int], record: list | None = None):
        """The model on latent rows `x` with `context`, row i belonging to sample `samples[i]` of the cond chunk
        (its sigma and ADM vector); returns the denoised prediction, or None when `record` collected the maps
        and the pass stopped early."""
        to = dict(self.to)
        to["cond_or_uncond"] = [0]
        to["sigmas"] = self.per_row(self.t, samples)
        if record is not None:
            replace = dict(to.get("patches_replace", {}))
            attn2 = dict(replace.get("attn2", {}))
            for key in MAP_LAYERS:
                attn2[key] = _record_maps(record, attn2.get(key, attn2.get(key[:2])))
            replace["attn2"] = attn2
            to["patches_replace"] = replace
        kwargs = {}
        for name, value in self.kwargs.items():
            if torch.is_tensor(value) and value.shape[:1] == self.x.shape[:1]:
                value = self.per_row(value, samples)
                if name == "y":  # the reference's auxiliary passes use a zero pooled text embedding
                    value = torch.cat([torch.zeros_like(value[:, :-SIZE_EMBEDDING]), value[:, -SIZE_EMBEDDING:]], 1)
            kwargs[name] = value
        c_concat = self.c_concat
        if torch.is_tensor(c_concat):  # inpainting models' extra channels
            c_concat = self.per_row(c_concat, samples)
        try:  # no ControlNet in the auxiliary passes: the reference has none, and its inputs are per batch
            return self.executor(x, to["sigmas"], c_concat, context, None, to, **kwargs)
        except _EnoughMaps:
            return None


def _eps(sigma, x, denoised):
    return (x - denoised) / sigma.view(-1, *[1] * (x.dim() - 1))


def _with_gradient(run: _Run, fn):
    """Runs a pass that is differentiated, one latent row at a time so memory does not grow with the batch or the
    groups. If the device runs out of memory, the activations kept for the backward pass move to CPU memory
    (torch's save_on_cpu) from then on: slower, and the GPU then holds about the weights and one layer's
    activations (counted on the meta device; not yet run on a GPU)."""
    import comfy.model_management

    if not run.offload:
        try:
            return fn()
        except torch.OutOfMemoryError:
            comfy.model_management.soft_empty_cache()
            run.offload = True
            logging.warning("Leakless ToMe: out of GPU memory in a gradient pass; keeping its activations in CPU "
                            "memory from now on (slower)")
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return fn()


def _semantic_update(run: _Run, call: _Sampling, x, text, step: int):
    """L_sem: each composite token alone must predict the noise its anchor phrase predicts; 'semantic_iterations'
    gradient steps of size semantic_lr on the composite rows, one (sample, group) row per gradient pass."""
    spec, s = run.spec, run.settings
    groups, batch = len(spec.groups), x.shape[0]
    nouns = [g.noun[0] for g in spec.groups]
    samples = [b for b in range(batch) for _ in range(groups)]  # row r = sample r // G, group r % G
    sigma = call.per_row(call.t, samples)
    xs = x.repeat_interleave(groups, 0)
    if s.anchor_latent:
        if run.anchor_latent is None:  # the reference starts every anchor latent from the initial latent
            run.anchor_latent = xs.detach().clone()
        xs = run.anchor_latent
    with torch.no_grad():  # the anchors' noise, once per step for every iteration (no activations are kept)
        anchors = spec.anchors.to(text).repeat(batch, 1, 1)
        target = _eps(sigma, xs, call.run(xs, anchors, samples))
    run.stats["forward"] += 1
    token = text[:, nouns].detach().reshape(batch * groups, 1, -1)
    for _ in range(s.semantic_iterations):
        rows = []
        for r, b in enumerate(samples):
            _check_interrupt()

            def row_grad(r=r, b=b, token=token):
                leaf = token[r:r + 1].clone().requires_grad_()
                pred = _eps(sigma[r:r + 1], xs[r:r + 1], call.run(xs[r:r + 1], leaf, [b]))
                grad, = torch.autograd.grad(((pred - target[r:r + 1]) ** 2).mean(), [leaf])
                return grad

            rows.append(token[r:r + 1] - s.semantic_lr * _with_gradient(run, row_grad))
            run.progress.update(1)
            run.stats["forward"] += 1
            run.stats["backward"] += 1
        token = torch.cat(rows).detach()
    if s.anchor_latent:
        _advance_anchor_latent(run, call, xs, sigma, target, samples, step)
    text = text.clone()
    text[:, nouns] = token.reshape(batch, groups, -1)
    return text


def _advance_anchor_latent(run: _Run, call: _Sampling, xs, sigma, anchor_eps, samples, step: int):
    """The reference code's anchor-latent step: an Euler step of the *scaled* latent with the inverted guidance
    null + cfg * (null - anchor), the scaling re-applied every step (it compounds, as in the code)."""
    if run.negative is None:
        raise RuntimeError("Leakless ToMe Semantic Binding: 'anchor latent' needs the sampler's negative prompt "
                           "(KSampler, or SamplerCustomAdvanced with CFGGuider); use the main latent otherwise")
    negative = run.negative.to(xs).expand(xs.shape[0], -1, -1)
    with torch.no_grad():
        null = _eps(sigma, xs, call.run(xs, negative, samples))
    run.stats["forward"] += 1
    sample_sigmas = call.to["sample_sigmas"]
    c_in = call.executor.class_obj.model_sampling.calculate_input(sigma, torch.ones_like(xs))
    delta = (sample_sigmas[step + 1] - sample_sigmas[step]).to(xs)
    run.anchor_latent = (xs * c_in + delta * (null + run.cfg * (null - anchor_eps))).detach()


def _entropy_update(run: _Run, call: _Sampling, x, text, step, steps, c_in):
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
            _check_interrupt()

            def sample_grad(b=b):
                x_leaf = xs[b][None].clone().requires_grad_()
                text_leaf = texts[b][None].clone().requires_grad_()
                maps = []
                call.run(x_leaf, text_leaf, [b], record=maps)
                if len(maps) != len(MAP_LAYERS):
                    raise RuntimeError("Leakless ToMe Semantic Binding: the model has no cross-attention at output "
                                       "block 1, transformer blocks 1-3 (SDXL's); it is not an SDXL UNet")
                h, w = maps[0][1]
                mean = torch.stack([m for m, _ in maps]).mean(0).view(1, h, w, -1)
                loss = tome.entropy_loss(mean, nouns, spec.eot, s.temperature)
                if s.pose_prior:
                    loss = loss + tome.pose_loss(mean, nouns, spec.eot, s.temperature)
                if float(loss.detach()) == 0:
                    return loss.detach(), None, None
                return (loss.detach(), *torch.autograd.grad(loss.sum(), [x_leaf, text_leaf]))

            loss, gx, gt = _with_gradient(run, sample_grad)
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


def _check_interrupt():
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def _optimize(run: _Run, call: _Sampling, step: int, steps: int):
    """One optimized step: L_sem on the composite tokens, then L_ent on the latent and the text rows (reference
    order). Returns the updated latent rows (this step's model input only) and stores the text rows."""
    import comfy.utils

    s = run.settings
    x = call.x[call.rows].detach()
    sigma = call.t[call.rows]
    c_in = call.executor.class_obj.model_sampling.calculate_input(sigma, torch.ones_like(x))
    passes = x.shape[0] * (s.semantic_iterations * len(run.spec.groups) + s.entropy_iterations)
    run.progress = comfy.utils.ProgressBar(passes)  # ComfyUI's progress bar: one tick per gradient pass
    with torch.inference_mode(False), torch.enable_grad(), tome.GradThroughInference():
        text = run.text.clone()
        if s.semantic_iterations:
            text = _semantic_update(run, call, x, text, step)
        if s.entropy_iterations:
            x, text = _entropy_update(run, call, x, text, step, steps, c_in)
    run.progress.update_absolute(passes)  # entropy loops that stopped under the threshold
    run.last.update(step=step, text_change=float((text - run.text).abs().max()),
                    latent_change=float((x - call.x[call.rows]).abs().max()))
    logging.debug("Leakless ToMe step %d: %s", step, run.last)
    with torch.inference_mode():
        run.text = text.clone()
        return x.clone()


def _single_value_levels(unet) -> set[int]:
    """Downsampling levels of the UNet holding a GroupNorm with one channel per group. ToMe's gradient passes run
    one image at a time, and torch's group_norm refuses a group of one value: such a norm needs 2+ pixels there."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    levels, level = set(), 0
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks, unet.out]:
        for m in block.modules():  # in the order they run
            if isinstance(m, torch.nn.GroupNorm) and m.num_channels == m.num_groups:
                levels.add(level)
            elif isinstance(m, Downsample):
                level += 1
            elif isinstance(m, Upsample):
                level -= 1
    return levels


def _check_size(call: _Sampling):
    """Refuses, before any gradient work, a latent too small for one-image passes of this UNet."""
    levels = _single_value_levels(call.executor.class_obj.diffusion_model)
    h, w = call.x.shape[-2:]
    if all(-(-h // 2 ** n) * -(-w // 2 ** n) > 1 for n in levels):
        return
    side = (2 ** max(levels) + 1) * 8  # 2+ pixels at level n <=> the longer latent side > 2^n
    raise LeaklessInputError(
        ToMeSemanticBinding.NAME, "model", f"the latent is {w * 8}x{h * 8} px; ToMe's one-image gradient passes "
        f"through this UNet need its longer side to be at least {side} px (a group norm after {max(levels)} "
        "downsampling(s) would see a single value).", f"use a width or height of {side} px or more (e.g. "
        f"{side}x{side}), or bypass this node at this size.")


def _make_apply_model_wrapper(key: str, spec: BindingSpec, settings: Settings):
    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        to = transformer_options or {}
        run = run_state.state_of(to, key, ToMeSemanticBinding.NAME)
        if to.get("multigpu_thread_device") is not None:  # set by 0.33.0's multi-GPU work units
            raise LeaklessInputError(
                ToMeSemanticBinding.NAME, "model", "ToMe's update of a step's latent must reach both its cond and "
                "uncond passes, which MultiGPU CFG Split runs at the same time on different GPUs.", "remove "
                "MultiGPU CFG Split (MultiGPU_WorkUnits) from this model's chain: ToMe samples on one GPU.")
        call = _Sampling(executor, x, t, c_concat, kwargs, to)
        step, steps = sigma_step(to, ToMeSemanticBinding.NAME)
        rows = cond_rows(to, x.shape[0])
        if c_crossattn is not None and rows:  # follow ComfyUI's switch to the substituted conditioning
            seen = c_crossattn[rows]
            if _rows_match(seen, spec.substituted) and not _rows_match(seen, spec.merged):
                if run.text is not None and not run.substituted:
                    run.text = run.text.clone()
                    run.text[:, spec.eot:] = spec.substituted[:, spec.eot:].to(run.text)
                run.substituted = True
            elif not _rows_match(seen, spec.merged):
                raise RuntimeError(
                    "Leakless ToMe Semantic Binding: the positive prompt the sampler sees is not the one from "
                    "Leakless ToMe Encode. Connect ToMe Encode's conditioning as the positive of the sampler "
                    "that uses this model (its binding output goes to this node).")
        if run.text is None:
            base = spec.substituted if run.substituted else spec.merged
            run.text = base.to(x.device, torch.float32).repeat(call.per, 1, 1)
        x_in = x
        if step < int(settings.window * steps + 0.5):  # the first 20% of 50 steps: 0..9
            if step not in run.done:
                if not run.done:
                    _check_size(call)
                run.done.add(step)
                run.latent[step] = (x[call.rows].clone(), _optimize(run, call, step, steps))
            before, after = run.latent.get(step, (None, None))
            if before is not None and torch.equal(before, x[call.rows]):  # first evaluation of the step
                x_in = after.to(x).repeat(len(call.flags), *[1] * (x.dim() - 1))
        if c_crossattn is not None and rows:  # the positive rows as updated so far, tiled like ComfyUI tiles them
            c_crossattn = c_crossattn.clone()
            tiled = run.text.to(c_crossattn).repeat(1, c_crossattn.shape[1] // run.text.shape[1], 1)
            c_crossattn[rows] = tiled.repeat(len(rows) // call.per, 1, 1)
        out = executor(x_in, t, c_concat, c_crossattn, control, to, **kwargs)
        # the reference steps from the un-updated latent with the noise predicted at the updated one
        return out if x_in is x else out + (x - x_in)

    return wrapper


def _check_sdxl(node: str, model):
    import comfy.model_base

    base = getattr(model, "model", None)
    if not isinstance(base, comfy.model_base.SDXL):
        name = type(base).__name__
        raise LeaklessInputError(node, "model", f"ToMe Semantic Binding reads SDXL's cross-attention (output "
                                 f"block 1); this model is {name}.", "connect an SDXL checkpoint's MODEL. FLUX "
                                 "leakage: use Leakless DeLeaker. SD1.5: ToMe Encode's merge works alone.")


class ToMeSemanticBinding(io.ComfyNode):
    NAME = "Leakless ToMe Semantic Binding"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessToMeSemanticBinding",
            display_name=cls.NAME,
            category="Leakless/tome",
            description=(
                "ToMe's inference-time updates (SDXL): during the first steps, makes each composite token's "
                "cross-attention map compact (entropy loss: updates the latent and the prompt rows) and each "
                "composite token mean what its phrase means (semantic binding loss). Needs gradients, so it is "
                "several times slower than plain sampling in its window; see the fast settings in the README."),
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model. The input is not changed; a patched clone is "
                               "returned."),
                BINDING.Input("binding", tooltip=(
                    "From Leakless ToMe Encode, whose conditioning must be this sampler's positive prompt.")),
                io.Float.Input("steps_fraction", default=0.2, min=0.0, max=1.0, step=0.01, tooltip=(
                    "The updates run during this first fraction of the sampler's steps: 0.2 (the paper; 10 of "
                    "50). The reference demos use 0.14 and 0.1. 0 turns the node off. Fast: 0.1.")),
                io.Int.Input("entropy_iterations", default=6, min=0, max=20, tooltip=(
                    "Most entropy-loss updates per step (fewer if the loss falls under the reference's "
                    "threshold). 6: reference object-binding demo; 4: attribute demo; 0: off. Fast: 1.")),
                io.Int.Input("semantic_iterations", default=3, min=0, max=10, tooltip=(
                    "Semantic-binding updates of each composite token per step (reference: 3). 0: off. Fast: 1.")),
                io.Float.Input("semantic_lr", default=1e4, min=0.0, max=1e6, step=100.0, tooltip=(
                    "Step size of the semantic-binding update (reference: 10000).")),
                io.Float.Input("entropy_step", default=3.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Entropy step size at the first step, falling linearly to 0 at the last (reference: 3).")),
                io.Boolean.Input("pose_prior", default=False, tooltip=(
                    "The reference's optional layout prior for two groups: first subject left, second right. "
                    "Off by default.")),
                io.Combo.Input("semantic_latent", options=LATENT_OPTIONS, default=LATENT_OPTIONS[0], tooltip=(
                    "The latent the semantic-binding loss predicts noise from: the sampling's own (default, as the "
                    "paper describes it), or the reference code's separate per-anchor latent, advanced with "
                    "inverted guidance (it looks unintended; for comparisons). Costs one more pass per step.")),
                io.Combo.Input("threshold_schedule", options=THRESHOLD_OPTIONS, default=THRESHOLD_OPTIONS[0],
                               optional=True, tooltip=(
                    "How a step picks its entry of the reference's entropy threshold table (written for steps "
                    "0-9 of 50): by its step index, as the reference code does at any step count (default), or "
                    "by its fraction of the schedule (step 2 of 25 reads step 4's entry), which keeps each entry "
                    "at the same point of the schedule with fewer or more steps. The two agree at 50 steps.")),
            ],
            outputs=[io.Model.Output("patched", display_name="model", tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, binding, steps_fraction, entropy_iterations, semantic_iterations, semantic_lr,
                entropy_step, pose_prior, semantic_latent=LATENT_OPTIONS[0],
                threshold_schedule=THRESHOLD_OPTIONS[0]) -> io.NodeOutput:
        check_inputs(cls, locals())
        _check_sdxl(cls.NAME, model)
        settings = Settings(steps_fraction, entropy_iterations, semantic_iterations, semantic_lr, entropy_step,
                            pose_prior, semantic_latent == LATENT_OPTIONS[1],
                            threshold_by_fraction=threshold_schedule == THRESHOLD_OPTIONS[1])
        if binding is None or not settings.updates_anything:
            return io.NodeOutput(model)
        if binding.family != "sdxl":
            raise LeaklessInputError(cls.NAME, "binding", f"the binding comes from a {binding.family} CLIP.",
                                     "encode the prompt with the SDXL checkpoint's CLIP.")
        if pose_prior and len(binding.groups) != 2:
            raise LeaklessInputError(cls.NAME, "pose_prior", f"the pose prior places two subjects; there are "
                                     f"{len(binding.groups)} groups.", "turn it off or use two groups.")
        import comfy.patcher_extension as ext

        key = run_state.new_key(WRAPPER_KEY)
        patched = model.clone()
        run_state.install(patched, WRAPPER_KEY, key, lambda guider: _Run(binding, settings, guider), _Run.release)
        patched.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                     _make_apply_model_wrapper(key, binding, settings))
        if binding.prompt is not None:  # it updates every positive row: all of them must be ToMe Encode's
            patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, provenance.KEY, provenance.outer_sample_check(
                cls.NAME, "binding", binding.prompt, ToMeEncode.NAME, "connect Leakless ToMe Encode's conditioning "
                "as the positive prompt of the sampler that uses this model, without other prompts combined.", True))
        return io.NodeOutput(patched)
