"""DeLeaker nodes (every joint-attention model of joint_models.py): DeLeaker Encode, DeLeaker (model patch),
DeLeaker Masks.

The patch is an ``optimized_attention_override`` on a clone of the MODEL: it runs whatever attention was there
before (another override such as Sage/Flash attention is chained, not replaced), then rewrites only the image-query
rows of the cond batch rows that DeLeaker edits. An APPLY_MODEL wrapper describes each model call once
(attention_glue.py): the model's adapter, the text segments, the image grid, where the entities' tokens are.
Steps come from the sigma schedule, never from counting calls.
The mask history and masks belong to one sampling run (nodes/run_state.py); when a run completes, its masks go to
the MASKS output (MaskResults), tied to the latent the run produced.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from . import attention_glue, deleaker, joint_models, provenance, run_results, run_state
from .alignment import ROWS, PhraseNotFoundError
from .clip_glue import align_clip, family_of
from .families import names
from .errors import LeaklessInputError, input_error
from .flow import PhraseRef, SelectionError, find_ref, parse_phrases
from .sampling_glue import cond_rows, sigma_step
from .validation import check_inputs

ENTITIES = io.Custom("LEAKLESS_ENTITIES")
MASKS = io.Custom("LEAKLESS_DELEAKER_MASKS")
WRAPPER_KEY = "leakless_deleaker"
OVERLAP_OPTIONS = ["reference", "exclusive"]
PALETTE = [(0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83), (1.0, 0.34, 0.13), (0.55, 0.76, 0.29)]


@dataclass(frozen=True)
class EntitySpec:
    """Entities tied to one encoded prompt: names, their CONDITIONING rows and the prompt's row count, and for
    HiDream the same for the Llama rows ('conditioning_llama3')."""

    names: tuple[str, ...]
    positions: tuple[tuple[int, ...], ...]
    length: int
    prompt: provenance.PromptTag | None = None  # the encoded prompt's tag: the positive entries DeLeaker edits
    family: str = "flux"
    llama: tuple[tuple[int, ...], ...] | None = None
    llama_length: int = 0

    def streams(self, e: int) -> dict:
        """Entity e per text stream (joint_models.text_positions)."""
        out = {0: (self.positions[e], self.length)}
        if self.llama is not None:
            out[1] = (self.llama[e], self.llama_length)
        return out


ENCODE_FIX = ("connect Leakless DeLeaker Encode's conditioning (FluxGuidance, timestep-range, area and mask nodes in "
              "between are fine) as the positive prompt of the sampler that uses this model.")
_MARK = re.compile(r"\*\*(.+?)\*\*")


def split_marked(text: str) -> tuple[str, list[tuple[str, int]]]:
    """'a **cow** and a **horse**' -> ('a cow and a horse', [('cow', 2), ('horse', 12)]): each mark's words and
    where they start in the text without marks."""
    marks = [(m.group(1).strip(), m.start(1) - 2 - 4 * i + len(m.group(1)) - len(m.group(1).lstrip()))
             for i, m in enumerate(_MARK.finditer(text))]
    return _MARK.sub(lambda m: m.group(1), text), marks


def _marked_ref(alignment, phrase: str, start: int) -> PhraseRef:
    """The occurrence that was marked: a second **cat** is 'cat#2'."""
    starts = [s for s, _ in alignment.find_spans(phrase)]
    if start not in starts:
        alignment.find(phrase)  # not in the prompt at all: that error
        raise SelectionError(f"'**{phrase}**' marks part of a word; mark whole words")
    return PhraseRef(phrase, starts.index(start) + 1)


def _check_disjoint(input_name: str, refs, positions, tokens) -> None:
    """DeLeaker separates entities, so no token row may belong to two of them."""
    for i, j in itertools.combinations(range(len(refs)), 2):
        shared = sorted(set(positions[i]) & set(positions[j]))
        if shared:
            same = positions[i] == positions[j]
            fix = (f"name it once, or, if the prompt has it twice, write '{refs[j].phrase}#2' for its second "
                   "occurrence." if same else "keep one of them, or give each its own words.")
            raise LeaklessInputError(
                DeLeakerEncode.NAME, input_name, f"'{refs[i]}' and '{refs[j]}' "
                f"{'are the same words' if same else 'overlap'}: both hold the token row(s) "
                f"{', '.join(f'{p} ({tokens.at(p).text!r})' for p in shared)}, and a token can belong to one entity "
                "only.", fix)


class DeLeakerEncode(io.ComfyNode):
    NAME = "Leakless DeLeaker Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeakerEncode",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=(
                "Encodes a prompt (like CLIPTextEncode) and finds its entities' tokens for Leakless DeLeaker, so the "
                "entities always match the prompt the sampler sees. Mark entities in the prompt as "
                "'a **cow** and a **horse**' (the marks are removed before encoding) or list them in 'entities'."),
            inputs=[
                io.Clip.Input("clip", tooltip=(
                    "The text encoder of a joint-attention model: FLUX.1 (DualCLIPLoader, type flux), FLUX.2, "
                    "Qwen-Image, Z-Image, Krea 2, Chroma (CLIPLoader), SD3 (TripleCLIPLoader), HiDream "
                    "(QuadrupleCLIPLoader).")),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip=(
                    "The prompt. Entities may be marked with double asterisks: 'a **cow** and a **horse** in a "
                    "farm'. A mark is that occurrence: a second **cat** is the second 'cat'.")),
                io.String.Input("entities", default="", tooltip=(
                    "Entities, comma-separated ('cow, horse'; 'cat#2' for the second 'cat'), if not marked in the "
                    "text (marks and entities together are an error). At least two. Each must be words of the "
                    "prompt; all its tokens are used; no token may be in two entities ('cow, a cow' is an "
                    "error).")),
            ],
            outputs=encode_outputs("The entities and their token rows: connect to Leakless DeLeaker."),
        )

    @classmethod
    def execute(cls, clip, text, entities) -> io.NodeOutput:
        check_inputs(cls, locals())

        def joint_only(family):
            if not family.joint:
                raise LeaklessInputError(cls.NAME, "clip", f"DeLeaker works on {names(lambda f: f.joint)}; this is "
                                         f"a CLIP for {family.name}, whose model has no joint attention.", "load the "
                                         "CLIP of a joint-attention model (e.g. CLIPLoader type qwen_image or flux2, "
                                         "DualCLIPLoader type flux).")

        def at_least_two(refs):
            if len(refs) < 2:
                return f"{len(refs)} entit{'y' if len(refs) == 1 else 'ies'} given; DeLeaker separates at least two"
            return None

        return encode_entities(cls.NAME, clip, text, entities, "entities", joint_only, at_least_two,
                               "name two or more entities that are words of the prompt, e.g. 'cow, horse', or mark "
                               "them as **cow**.", disjoint=True)


def encode_outputs(entities_tooltip: str) -> list:
    """The outputs of an encode node that finds phrases: the conditioning, and the phrases' rows."""
    return [io.Conditioning.Output("conditioning", display_name="conditioning",
                                   tooltip="The prompt's conditioning (marks removed): the sampler's positive."),
            ENTITIES.Output("entity_spec", display_name="entities", tooltip=entities_tooltip)]


def encode_entities(node: str, clip, text: str, listed: str, input_name: str, check_family, count_problem, fix: str,
                    disjoint: bool) -> io.NodeOutput:
    """Encode `text` (its ** marks removed) and find the phrases `listed` (comma-separated) or marked in it:
    (conditioning, EntitySpec). `check_family(family)` raises for a CLIP the node cannot use; `count_problem(refs)`
    says what is wrong with the number of phrases (None: nothing); `disjoint`: no token in two phrases."""
    clean, marked = split_marked(text)
    alignment = align_clip(node, clip, clean)
    family = family_of(node, alignment)
    check_family(family)
    if listed.strip() and marked:
        raise LeaklessInputError(node, input_name, "it is filled in and the text also marks "
                                 f"{input_name} ({', '.join(f'**{p}**' for p, _ in marked)}); only one of them can be "
                                 f"used.", f"clear '{input_name}' to use the marks, or remove the ** marks from the "
                                 "text.")
    llama = dict(family.extra_rows).get("conditioning_llama3")
    try:
        refs = (parse_phrases(listed, input_name) if listed.strip()
                else [_marked_ref(alignment, p, start) for p, start in marked])
        problem = count_problem(refs)
        if problem:
            raise SelectionError(problem)
        matches = [find_ref(alignment, r) for r in refs]
    except (PhraseNotFoundError, SelectionError) as e:
        raise input_error(node, input_name, e, fix) from None
    positions = tuple(tuple(m.of(ROWS)) for m in matches)
    if disjoint:
        _check_disjoint(input_name if listed.strip() else "text", refs, positions, alignment.encoder(ROWS))
    tokens = alignment.tokens
    conditioning, tag = provenance.tag_conditioning(node, clip, tokens, clean,
                                                    clip.encode_from_tokens_scheduled(tokens))
    spec = EntitySpec(tuple(str(r) for r in refs), positions, alignment.encoder(ROWS).length, tag, family.id,
                      tuple(tuple(m.positions[llama]) for m in matches) if llama else None,
                      alignment.encoders[llama].length if llama else 0)
    return io.NodeOutput(conditioning, spec)


class _Track:
    """The mask history and masks of one set of positive entries (their uuids) in one sampling run."""

    def __init__(self):
        self.history = deleaker.MaskHistory()
        self.masks = None  # masks in use: [rows, K, N] bool
        self.plans = None  # their MaskPlans, one per row
        self.layout = None  # the layout those masks belong to
        self.masks_key = None  # the history state they were made from


class _Run:
    """One sampling run's state: one track per set of positive entries, so model calls on other rows (0.33.0's
    multi-GPU CFG split runs cond and uncond in threads at once) never share one."""

    def __init__(self):
        self.tracks: dict[tuple, _Track] = {}
        self.lock = threading.Lock()
        self.history_bar = None  # ComfyUI's progress bar over the mask history window's steps

    def history_progress(self, done: int, total: int) -> None:
        import comfy.utils

        if self.history_bar is None:
            self.history_bar = comfy.utils.ProgressBar(total)
        self.history_bar.update_absolute(done, total)

    def track(self, entries: tuple) -> _Track:
        with self.lock:
            return self.tracks.setdefault(entries, _Track())


@dataclass
class _Call:
    """DeLeaker's view of one model call, made once by the APPLY_MODEL wrapper."""

    model_call: attention_glue.ModelCall
    layout: deleaker.Layout | None  # None: the positive prompt is not the entities' (an error if DeLeaker must act)
    schedule: joint_models.Schedule | None
    step: int | Exception  # the error when the sampler gave no sigma schedule (raised only if DeLeaker must act)
    rows: list[int]  # the batch rows DeLeaker edits
    track: _Track | None



def _make_wrapper(key: str, spec: EntitySpec, adapter: joint_models.JointModel, override, history_until: float):
    def wrapper(executor, *args, **kwargs):
        x, context, to, extra = attention_glue.apply_model_args(args, kwargs)
        run = run_state.state_of(to, key, DeLeaker.NAME)
        model_call = attention_glue.describe_call(adapter, executor.class_obj, x, context, extra)
        try:
            step, steps = sigma_step(to, DeLeaker.NAME)  # once per model call, not in every attention call
        except RuntimeError as e:  # raised by the override only if it has to act on this call
            step, steps = e, None
        rows = cond_rows(to, x.shape[0], provenance.tagged_uuids(to, spec.prompt))  # entries of its prompt
        positions = [joint_models.text_positions(model_call.segments, spec.streams(e), adapter.left_padded)
                     for e in range(len(spec.names))]
        layout = None if None in positions else \
            deleaker.Layout(model_call.layout.txt_len, model_call.grid, tuple(positions))
        schedule = joint_models.Schedule.of(adapter, model_call.n_blocks, model_call.n_first, steps,
                                            history_until) if steps else None
        call = _Call(model_call, layout, schedule, step, rows,
                     run.track(attention_glue.entries(to, x.shape[0], rows)) if rows else None)
        if rows and schedule and step < schedule.history_steps():  # the mask history window, step by step
            run.history_progress(step + 1, schedule.history_steps())
        return attention_glue.run_model_call(executor, args, kwargs, to, key, call, DeLeaker.NAME, model_call, override)

    return wrapper


def _make_override(key: str, spec: EntitySpec, settings: deleaker.Settings, previous):
    def override(func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        call = to.get(key + attention_glue.CALL_SUFFIX)
        a = attention_glue.AttentionCall(func, previous, args, kwargs)
        if call is None:
            return a.plain()
        call.model_call.ran = True
        if call.track is None or call.model_call.inside_outer(a) or not call.model_call.is_main(a):
            return a.plain()
        block = call.model_call.next_block()
        rows, track, layout = call.rows, call.track, call.layout
        if layout is None:
            raise RuntimeError(
                f"Leakless DeLeaker: the positive prompt the sampler sees has {call.model_call.segments[0][1]} "
                f"rows, but the entities came from a prompt of {spec.length}. Connect Leakless DeLeaker Encode's "
                "conditioning as the positive prompt of the sampler that uses this model.")
        if isinstance(call.step, Exception):
            raise call.step
        schedule = call.schedule
        b = schedule.block_step(call.step, block)
        in_history, intervene = schedule.in_history(b), schedule.intervenes(b)
        if not (in_history or intervene):
            return a.plain()
        a.text_first(call.model_call.layout)
        q, k, v, mask = a.q, a.k, a.v, a.mask
        history = track.history
        if b == schedule.history_start:
            history.reset()
        if history.mean is not None and history.mean.device != q.device:  # the multi-GPU split moved these rows
            history.mean, track.masks_key = history.mean.to(q.device), None
        scores = probs = None
        if in_history or history.mean is None or b <= schedule.history_start:
            scores, probs = deleaker.scores_and_image_probs(
                q[rows], k[rows], layout, deleaker.attention_mask_4d(mask, rows),
                image_probs=intervene and settings.image_image)
        if in_history:
            history.update(scores)
        if not intervene:
            return a.plain()
        from_history = history.mean is not None and b > schedule.history_start
        masks_key = (history.epoch, history.count, layout) if from_history else None
        if masks_key is None or masks_key != track.masks_key:  # a frozen history gives the same masks: plan once
            use = history.mean if from_history else scores
            track.masks, track.layout, track.masks_key = deleaker.entity_masks(use, layout, settings), layout, masks_key
            track.plans = [deleaker.MaskPlan(m, settings) for m in track.masks]
        return a.output(deleaker.deleaker_attention(q, k, v, a.attend, track.plans, layout, settings, rows, mask,
                                                    probs))

    override.leakless_previous = previous
    return override


@dataclass(frozen=True)
class MaskRun:
    """The masks of one completed sampling run, and what ties them to it."""

    masks: torch.Tensor  # [cond rows, K, N] bool, on the CPU
    grid: tuple[int, int]  # the image token grid (h, w)
    latent: tuple[int, ...]  # the shape of the latent the run produced
    fingerprint: str  # a digest of that latent
    prompt: str | None  # the prompt execution the run belonged to (None outside one)
    names: tuple[str, ...] = ()  # the entities, in mask order

    @property
    def missing(self) -> list[str]:
        """The entities no image token was assigned to in any image of the run."""
        found = self.masks.any(dim=-1).any(dim=0).tolist()
        return [name for name, hit in zip(self.names, found, strict=False) if not hit]

    def summary(self) -> str:
        """What the user is told about the masks ('' when every entity was found)."""
        missing = self.missing
        if not missing:
            return ""
        if len(missing) == len(self.names):
            return ("Leakless DeLeaker found none of the entities in the image (every mask is empty), so it changed "
                    "nothing in this sampling. Lower mask_threshold (e.g. 0.5), or check that the entities are what "
                    "the image shows.")
        return (f"Leakless DeLeaker found no image region for {', '.join(repr(n) for n in missing)} (empty mask), so "
                "those entities were not separated. Lower mask_threshold to find them.")


class MaskResults(run_results.RunResults):
    """DeLeaker's MASKS output: the masks of the last KEEP completed sampling runs with this patched model."""

    def __init__(self, names: tuple[str, ...] = ()):
        super().__init__()
        self.names = names

    def record(self, run: _Run, output) -> None:
        track = next((t for t in run.tracks.values() if t.masks is not None), None)  # the first positive entries
        if track is None or not torch.is_tensor(output):
            return
        done = MaskRun(track.masks.cpu(), track.layout.grid, tuple(output.shape), run_results.fingerprint(output),
                       run_results.prompt_id(), self.names)
        self.add(done)
        if done.summary():
            logging.warning("%s", done.summary())  # shown in ComfyUI's log; DeLeaker Masks shows it too



class DeLeaker(io.ComfyNode):
    NAME = "Leakless DeLeaker"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeaker",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=(
                "DeLeaker (FLUX.1/.2, Qwen-Image, Z-Image, Krea 2, SD3, HiDream, Chroma): finds where each entity is "
                "from early attention, then keeps each entity's image "
                "region from attending to the other entities' words and strongly to their image regions, and "
                "reinforces its own words. Works at inference time on a clone of the model; other attention patches "
                "keep working. Defaults are the paper's code's."),
            inputs=[
                io.Model.Input("model", tooltip="A joint-attention model (FLUX.1 / Kontext, FLUX.2, Qwen-Image, "
                               "Z-Image, Krea 2, SD3.5, HiDream, Chroma). The input is not changed; a patched clone "
                               "is returned."),
                io.Float.Input("mask_threshold", default=1.0, min=-3.0, max=5.0, step=0.05, tooltip=(
                    "beta1: an image token belongs to an entity when its attention to the entity's words is above "
                    "mean + beta1 x std. Default 1.0 (paper); raise for tighter masks.")),
                io.Float.Input("image_threshold", default=1.0, min=-3.0, max=5.0, step=0.05, tooltip=(
                    "beta2: image-to-image attention between two entities' regions is cut above mean + beta2 x std. "
                    "Default 1.0 (paper); raise to cut less.")),
                io.Float.Input("alpha", default=1.2, min=1.0, max=3.0, step=0.05, tooltip=(
                    "Self-identity reinforcement: logits from an entity's region to its own words are multiplied by "
                    "this. Default 1.2 (paper); 1.0 turns it off.")),
                io.Float.Input("mask_history", default=0.6, min=0.0, max=1.0, step=0.05, tooltip=(
                    "Masks come from the attention averaged over this first fraction of the steps (paper: 12 of 20 "
                    "= 0.6), then stay fixed.")),
                io.Boolean.Input("cross_text", default=True, tooltip="Block image-to-text attention between entities "
                                 "(the main edit). On by default; off only for ablations."),
                io.Boolean.Input("self_text", default=True, tooltip="Reinforce each entity region's attention to its "
                                 "own words by alpha. On by default."),
                io.Boolean.Input("image_image", default=True, tooltip=(
                    "Cut strong image-to-image attention between entities' regions. On by default; it is the "
                    "costliest edit and contributes least in the paper's ablation: turn it off for speed.")),
                io.Boolean.Input("alpha_per_pair", default=False, tooltip=(
                    "Off: alpha once per entity. On: the paper's code, which applies alpha once per entity pair "
                    "(alpha^2 for three entities).")),
                io.Combo.Input("overlap", options=OVERLAP_OPTIONS, default="reference", tooltip=(
                    "Image tokens in two entities' masks: 'reference' blocks both entities' words there (the "
                    "paper's code); 'exclusive' gives them to the entity they attend to most.")),
                ENTITIES.Input("entities", optional=True, tooltip=(
                    "From Leakless DeLeaker Encode, whose conditioning must be this sampler's positive prompt. "
                    "Unconnected: the model is returned unchanged.")),
            ],
            outputs=[
                io.Model.Output("patched", display_name="model", tooltip="The patched clone."),
                MASKS.Output("masks", display_name="masks",
                             tooltip="After sampling, Leakless DeLeaker Masks shows where each entity was found."),
            ],
        )

    @classmethod
    def execute(cls, model, mask_threshold, image_threshold, alpha, mask_history, cross_text, self_text,
                image_image, alpha_per_pair, overlap, entities=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        adapter = attention_glue.joint_model(cls.NAME, model)
        settings = deleaker.Settings(beta_text=mask_threshold, beta_image=image_threshold, alpha=alpha,
                                     cross_text=cross_text, self_text=self_text, image_image=image_image,
                                     alpha_per_pair=alpha_per_pair, overlap=overlap)
        if entities is None or not settings.edits_anything:
            return io.NodeOutput(model, None)
        if len(entities.names) < 2:
            raise LeaklessInputError(cls.NAME, "entities", "fewer than two entities.", "name at least two in "
                                     "Leakless DeLeaker Encode.")
        attention_glue.check_prompt_family(cls.NAME, entities, adapter.text_families, adapter.name,
                                           "Leakless DeLeaker Encode")
        key, results = run_state.new_key(WRAPPER_KEY), MaskResults(entities.names)
        patched = attention_glue.install_patch(
            model, WRAPPER_KEY, key, lambda previous: _make_override(key, entities, settings, previous),
            lambda override: _make_wrapper(key, entities, adapter, override, mask_history),
            _Run, results.record, (cls.NAME, entities.prompt, DeLeakerEncode.NAME, ENCODE_FIX))
        return io.NodeOutput(patched, results)


class DeLeakerMasks(io.ComfyNode):
    NAME = "Leakless DeLeaker Masks"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeakerMasks",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=("Where DeLeaker localized each entity in the sampling run that made these images: one MASK "
                         "per entity (and per image) and a coloured overlay on the decoded images. Connect the "
                         "sampler's LATENT to 'samples' to tie the masks to it; masks of another run are never "
                         "shown."),
            inputs=[
                MASKS.Input("masks", tooltip="Leakless DeLeaker's 'masks' output."),
                io.Image.Input("images", tooltip="The decoded images of that run (this node runs after them)."),
                io.Float.Input("opacity", default=0.45, min=0.0, max=1.0, step=0.05, tooltip="Overlay colour "
                               "strength; 0 shows the images unchanged."),
                io.Latent.Input("samples", optional=True, tooltip=(
                    "The sampler's LATENT output (recommended): the masks of the run that made it, even when the "
                    "sampler's result is reused from an earlier run. Unconnected: the one sampling with this model "
                    "in this run of the workflow.")),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="Per image, one mask per entity, in order."),
                io.Image.Output("overlay", display_name="overlay", tooltip="The images with each entity's mask "
                                "tinted in its own colour."),
            ],
        )

    @classmethod
    def execute(cls, masks, images, opacity, samples=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        if masks is None:
            raise LeaklessInputError(cls.NAME, "masks", "Leakless DeLeaker made no masks: it was off (no entities "
                                     "connected, or every edit off).", "connect DeLeaker Encode's entities to "
                                     "Leakless DeLeaker and sample with its model.")
        run = masks.find(cls.NAME, samples)
        n, ih, iw = run_results.check_images(cls.NAME, images, run.latent, DeLeaker.NAME)
        m = run.masks.float()  # [R, K, N]
        r, k, _ = m.shape
        h, w = run.grid
        grids = m.reshape(r * k, 1, h, w)
        up = torch.nn.functional.interpolate(grids, size=(ih, iw), mode="nearest").reshape(r, k, ih, iw)
        up = up[torch.arange(n) % r]  # one set of masks per image (batches tile like conditioning)
        overlay = images[..., :3].clone()
        for e in range(k):
            colour = torch.tensor(PALETTE[e % len(PALETTE)], dtype=overlay.dtype, device=overlay.device)
            a = (up[:, e, ..., None] * opacity).to(overlay.device, overlay.dtype)
            overlay = overlay * (1 - a) + colour * a
        summary = run.summary() or f"Every entity was found: {', '.join(run.names)}."
        return io.NodeOutput(up.reshape(n * k, ih, iw).to(images.device), overlay, ui={"text": [summary]})
