"""DeLeaker nodes (FLUX): DeLeaker Encode, DeLeaker (model patch), DeLeaker Masks.

The patch is an ``optimized_attention_override`` on a clone of the MODEL: it runs whatever attention was there
before (another override such as Sage/Flash attention is chained, not replaced), then rewrites only the image-query
rows of the cond batch rows that DeLeaker edits. A DIFFUSION_MODEL wrapper records, per model call, the text length
and the image grid the attention calls need. Steps come from the sigma schedule, never from counting calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from . import deleaker
from .alignment import PhraseNotFoundError
from .clip_glue import align_clip
from .errors import LeaklessInputError, input_error
from .flow import PhraseRef, SelectionError, parse_phrases
from .sampling_glue import cond_rows, sigma_step

ENTITIES = io.Custom("LEAKLESS_ENTITIES")
MASKS = io.Custom("LEAKLESS_DELEAKER_MASKS")
WRAPPER_KEY = "leakless_deleaker"
REFERENCE_HISTORY_START = 12 / 57  # block 12 of FLUX.1's 57 in the first step
OVERLAP_OPTIONS = ["reference", "exclusive"]
PALETTE = [(0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83), (1.0, 0.34, 0.13), (0.55, 0.76, 0.29)]


@dataclass(frozen=True)
class EntitySpec:
    """Entities tied to one encoded FLUX prompt: names and their T5 positions, and the T5 length."""

    names: tuple[str, ...]
    positions: tuple[tuple[int, ...], ...]
    t5_length: int


_MARK = re.compile(r"\*\*(.+?)\*\*")


def split_marked(text: str) -> tuple[str, list[str]]:
    """'a **cow** and a **horse**' -> ('a cow and a horse', ['cow', 'horse'])."""
    return _MARK.sub(lambda m: m.group(1), text), [m.group(1).strip() for m in _MARK.finditer(text)]


class DeLeakerEncode(io.ComfyNode):
    NAME = "Leakless DeLeaker Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeakerEncode",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=(
                "Encodes a FLUX or Chroma prompt (like CLIPTextEncode) and finds its entities' T5 tokens for Leakless "
                "DeLeaker, so the entities always match the prompt the sampler sees. Mark entities in the prompt as "
                "'a **cow** and a **horse**' (the marks are removed before encoding) or list them in 'entities'."),
            inputs=[
                io.Clip.Input("clip", tooltip=(
                    "The FLUX CLIP (DualCLIPLoader, type flux) or Chroma's T5 (CLIPLoader, type chroma): entities "
                    "are T5 tokens.")),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip=(
                    "The prompt. Entities may be marked with double asterisks: 'a **cow** and a **horse** in a "
                    "farm'.")),
                io.String.Input("entities", default="", tooltip=(
                    "Entities, comma-separated ('cow, horse'; 'cat#2' for the second 'cat'), if not marked in the "
                    "text. At least two. Each must be words of the prompt; all its T5 tokens are used.")),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning",
                                       tooltip="The prompt's conditioning (marks removed): the sampler's positive."),
                ENTITIES.Output("entity_spec", display_name="entities",
                                tooltip="The entities and their T5 token positions: connect to Leakless DeLeaker."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, entities) -> io.NodeOutput:
        clean, marked = split_marked(text)
        alignment = align_clip(cls.NAME, clip, clean)
        if set(alignment.encoders) not in ({"l", "t5xxl"}, {"t5xxl"}):  # FLUX's CLIP-L + T5, or T5 alone (Chroma)
            raise LeaklessInputError(cls.NAME, "clip", "DeLeaker works on FLUX and Chroma, whose entities are T5 "
                                     f"tokens; this CLIP's text encoders are {sorted(alignment.encoders)}.",
                                     "load the CLIP with DualCLIPLoader type flux, or CLIPLoader type chroma.")
        try:
            refs = parse_phrases(entities, "entities") if entities.strip() else [PhraseRef(m) for m in marked]
            if len(refs) < 2:
                raise SelectionError(f"{len(refs)} entit{'y' if len(refs) == 1 else 'ies'} given; DeLeaker separates "
                                     "at least two")
            positions = tuple(tuple(alignment.find(r.phrase, r.occurrence).positions["t5xxl"]) for r in refs)
        except (PhraseNotFoundError, SelectionError) as e:
            raise input_error(cls.NAME, "entities", e, "name two or more entities that are words of the prompt, "
                              "e.g. 'cow, horse', or mark them as **cow**.") from None
        spec = EntitySpec(tuple(str(r) for r in refs), positions, alignment.encoders["t5xxl"].length)
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(clean))
        return io.NodeOutput(conditioning, spec)


class _Run:
    """State of one patched model: the mask history and the last masks (shared by every clone of the patch)."""

    def __init__(self, spec: EntitySpec, settings: deleaker.Settings, history_until: float):
        self.spec, self.settings, self.history_until = spec, settings, history_until
        self.history = deleaker.MaskHistory()
        self.call = None  # (layout, double blocks, single blocks, step, steps) of the model call in progress
        self.masks = None  # last masks used: [cond rows, K, N] bool
        self.plans = None  # their MaskPlans, one per cond row
        self.layout = None  # the layout those masks belong to
        self.masks_key = None  # the history state they were made from


def _make_wrapper(run: _Run):
    def wrapper(executor, x, timestep, context, *args, **kwargs):
        model = executor.class_obj
        p = model.patch_size
        grid = ((x.shape[-2] + p // 2) // p, (x.shape[-1] + p // 2) // p)
        to = kwargs.get("transformer_options") or next(
            (a for a in args if isinstance(a, dict) and "sigmas" in a), {})
        try:
            step, steps = sigma_step(to, DeLeaker.NAME)  # once per model call, not in every attention call
        except RuntimeError as e:  # raised by the override only if it has to act on this call
            step, steps = e, None
        layout = deleaker.Layout(context.shape[1], grid, run.spec.positions)  # once per model call
        run.call = (layout, len(model.double_blocks), len(model.single_blocks), step, steps)
        try:
            return executor(x, timestep, context, *args, **kwargs)
        finally:
            run.call = None

    return wrapper


def _make_override(run: _Run, previous):
    def override(func, *args, **kwargs):
        def attention(*a, **changed):
            kw = dict(kwargs, **changed) if changed else kwargs
            return previous(func, *a, **kw) if previous is not None else func(*a, **kw)

        to = kwargs.get("transformer_options") or {}
        if run.call is None or to.get("block_type") not in ("double", "single") or not kwargs.get("skip_reshape") \
                or kwargs.get("skip_output_reshape"):
            return attention(*args)
        q, k, v, heads = args[:4]
        rows = cond_rows(to, q.shape[0])
        if not rows:
            return attention(*args)
        layout, n_double, n_single, step, steps = run.call
        if layout.txt_len != run.spec.t5_length:
            raise RuntimeError(
                f"Leakless DeLeaker: the positive prompt the sampler sees has {layout.txt_len} T5 tokens, but the "
                f"entities came from a prompt of {run.spec.t5_length}. Connect Leakless DeLeaker Encode's "
                "conditioning as the positive prompt of the sampler that uses this model.")
        if isinstance(step, Exception):
            raise step
        n_layers = n_double + n_single
        layer = to["block_index"] + (0 if to["block_type"] == "double" else n_double)
        b = step * n_layers + layer
        hist_start = round(REFERENCE_HISTORY_START * n_layers)
        hist_end = round(run.history_until * steps) * n_layers
        in_history = hist_start <= b < hist_end
        intervene = b >= n_double - 1  # from the first step's last double block to the end (reference: 18)
        if not (in_history or intervene) or q.shape[2] < layout.txt_len + layout.n_img:
            return attention(*args)
        if b == hist_start:
            run.history.reset()
        scores = probs = None
        if in_history or run.history.mean is None or b <= hist_start:
            scores, probs = deleaker.scores_and_image_probs(
                q[rows], k[rows], layout, deleaker.attention_mask_4d(kwargs.get("mask"), rows),
                image_probs=intervene and run.settings.image_image)
        if in_history:
            run.history.update(scores)
        if not intervene:
            return attention(*args)
        from_history = run.history.mean is not None and b > hist_start
        key = (run.history.epoch, run.history.count, layout) if from_history else None
        if key is None or key != run.masks_key:  # a frozen history gives the same masks: plan them once
            use = run.history.mean if from_history else scores
            run.masks, run.layout, run.masks_key = deleaker.entity_masks(use, layout, run.settings), layout, key
            run.plans = [deleaker.MaskPlan(m, run.settings) for m in run.masks]

        def attend(qx, kx, vx, mask):  # the model's own attention on any rows and (edited) keys
            return attention(qx, kx, vx, heads, *args[4:], mask=mask)

        return deleaker.deleaker_attention(q, k, v, attend, run.plans, layout, run.settings, rows, kwargs.get("mask"),
                                           probs)

    return override


def _is_flux(model) -> bool:
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    return dm is not None and hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks") and \
        hasattr(dm, "patch_size")


class DeLeaker(io.ComfyNode):
    NAME = "Leakless DeLeaker"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeaker",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=(
                "DeLeaker (FLUX): finds where each entity is from early attention, then keeps each entity's image "
                "region from attending to the other entities' words and strongly to their image regions, and "
                "reinforces its own words. Works at inference time on a clone of the model; other attention patches "
                "keep working. Defaults are the paper's code's."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX model (FLUX.1 dev/schnell, Kontext). The input is not "
                               "changed; a patched clone is returned."),
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
        if not _is_flux(model):
            name = type(getattr(getattr(model, "model", None), "diffusion_model", None)).__name__
            raise LeaklessInputError(cls.NAME, "model", f"DeLeaker edits FLUX joint attention; this model is a "
                                     f"{name}.", "connect a FLUX model (UNETLoader with a FLUX file).")
        settings = deleaker.Settings(beta_text=mask_threshold, beta_image=image_threshold, alpha=alpha,
                                     cross_text=cross_text, self_text=self_text, image_image=image_image,
                                     alpha_per_pair=alpha_per_pair, overlap=overlap)
        if entities is None or not settings.edits_anything:
            return io.NodeOutput(model, None)
        if len(entities.names) < 2:
            raise LeaklessInputError(cls.NAME, "entities", "fewer than two entities.", "name at least two in "
                                     "Leakless DeLeaker Encode.")
        run = _Run(entities, settings, mask_history)
        patched = model.clone()
        to = patched.model_options.setdefault("transformer_options", {})
        to["optimized_attention_override"] = _make_override(run, to.get("optimized_attention_override"))
        import comfy.patcher_extension

        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                     _make_wrapper(run))
        return io.NodeOutput(patched, run)


class DeLeakerMasks(io.ComfyNode):
    NAME = "Leakless DeLeaker Masks"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeakerMasks",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=("Where DeLeaker localized each entity in the last sampling run: one MASK per entity (and "
                         "per image) and a coloured overlay on the decoded images."),
            inputs=[
                MASKS.Input("masks", tooltip="Leakless DeLeaker's 'masks' output."),
                io.Image.Input("images", tooltip="The decoded images of that run (this node runs after them)."),
                io.Float.Input("opacity", default=0.45, min=0.0, max=1.0, step=0.05, tooltip="Overlay colour "
                               "strength; 0 shows the images unchanged."),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="Per image, one mask per entity, in order."),
                io.Image.Output("overlay", display_name="overlay", tooltip="The images with each entity's mask "
                                "tinted in its own colour."),
            ],
        )

    @classmethod
    def execute(cls, masks, images, opacity) -> io.NodeOutput:
        if masks is None or masks.masks is None:
            raise LeaklessInputError(cls.NAME, "masks", "no DeLeaker masks exist yet (DeLeaker was off, had no "
                                     "entities, or the sampler has not run with the patched model).",
                                     "sample with Leakless DeLeaker's model and connect its decoded images.")
        m = masks.masks.float()  # [R, K, N]
        r, k, _ = m.shape
        h, w = masks.layout.grid
        grids = m.reshape(r * k, 1, h, w)
        n, ih, iw, _ = images.shape
        up = torch.nn.functional.interpolate(grids, size=(ih, iw), mode="nearest").reshape(r, k, ih, iw)
        up = up[torch.arange(n) % r]  # one set of masks per image (batches tile like conditioning)
        overlay = images[..., :3].clone()
        for e in range(k):
            colour = torch.tensor(PALETTE[e % len(PALETTE)], dtype=overlay.dtype, device=overlay.device)
            a = (up[:, e, ..., None] * opacity).to(overlay.device, overlay.dtype)
            overlay = overlay * (1 - a) + colour * a
        return io.NodeOutput(up.reshape(n * k, ih, iw).to(images.device), overlay)
