"""Attention heatmap nodes: Leakless Heatmap Encode, Leakless Attention Heatmap (model patch), Leakless Heatmap Show.

The patch is an ``optimized_attention_override`` on a clone of the MODEL that only reads: in the chosen blocks and
steps it scores the image rows' attention to each word's tokens (deleaker.entity_scores, on the positive prompt's
cond rows) and returns the original call's result unchanged, so the image is bit-identical. Joint models are
described per model call as DeLeaker does (attention_glue.py); on a UNet (SDXL, SD1.5) the cross-attention calls are
scored, each on its level's grid, brought to the latent's grid. The maps belong to one sampling run
(run_state.py), tied to the latent it produced (run_results.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from . import attention_glue, deleaker, heatmap, joint_models, provenance, run_results, run_state
from .deleaker_nodes import ENTITIES, encode_entities, encode_outputs
from .errors import LeaklessInputError
from .families import FAMILIES as FAMILY_LIST
from .sampling_glue import cond_rows, sigma_step
from .validation import check_inputs

HEATMAPS = io.Custom("LEAKLESS_HEATMAPS")
WRAPPER_KEY = "leakless_heatmap"
UNET_FAMILIES = tuple(f.id for f in FAMILY_LIST if not f.joint)  # the families whose models cross-attend (UNets)
SUPPORTED = f"{joint_models.NAMES}, SDXL, SD1.5"


class HeatmapEncode(io.ComfyNode):
    NAME = "Leakless Heatmap Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessHeatmapEncode",
            display_name=cls.NAME,
            category="Leakless/heatmap",
            description=("Encodes a prompt (like CLIPTextEncode) and finds the tokens of the words whose attention "
                         "heatmaps Leakless Attention Heatmap records. Mark words as 'a **cow** in a farm' (the "
                         "marks are removed before encoding) or list them in 'words'."),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model: SDXL, SD1.5 or any joint-attention "
                              "model (FLUX.1/.2, Qwen-Image, Z-Image, Krea 2, SD3, HiDream, Chroma)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip=(
                    "The prompt. Words may be marked with double asterisks: 'a **red cat** on a sofa'.")),
                io.String.Input("words", default="", tooltip=(
                    "Words, comma-separated ('cat, sofa'; 'cat#2' for the second 'cat'), if not marked in the text. "
                    "At least one; each must be words of the prompt.")),
            ],
            outputs=encode_outputs("The words and their token rows: connect to Leakless Attention Heatmap."),
        )

    @classmethod
    def execute(cls, clip, text, words) -> io.NodeOutput:
        check_inputs(cls, locals())
        return encode_entities(cls.NAME, clip, text, words, "words", lambda family: None,
                               lambda refs: None if refs else "no words given; a heatmap needs at least one",
                               "name one or more words of the prompt, e.g. 'cow, horse', or mark them as **cow**.",
                               disjoint=False)


@dataclass(frozen=True)
class HeatmapRun:
    """The maps of one completed sampling run, and what ties them to it."""

    maps: torch.Tensor  # [cond rows, K, h, w] fp32, on the CPU
    latent: tuple[int, ...]
    fingerprint: str
    prompt: str | None
    names: tuple[str, ...]


class HeatmapResults(run_results.RunResults):
    """Attention Heatmap's HEATMAPS output: the maps of its last KEEP completed sampling runs."""

    patch = "Leakless Attention Heatmap"
    what = "heatmaps"

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names = names

    def record(self, run: _Run, output) -> None:
        found = next((s for s in run.sums.values() if s.count), None)  # the first positive entries
        if found is not None and torch.is_tensor(output):
            self.add(HeatmapRun(found.mean.cpu(), tuple(output.shape), run_results.fingerprint(output),
                                run_results.prompt_id(), self.names))


class _Run:
    """One sampling run's sums, one per set of positive entries (their uuids)."""

    def __init__(self):
        self.sums: dict[tuple, heatmap.HeatmapSum] = {}
        self.lock = threading.Lock()

    def sum_of(self, entries: tuple, grid) -> heatmap.HeatmapSum:
        with self.lock:
            return self.sums.setdefault(entries, heatmap.HeatmapSum(grid))


@dataclass
class _Call:
    """The heatmap's view of one model call, made once by the APPLY_MODEL wrapper."""

    rows: list[int]  # the cond batch rows of the positive prompt
    positions: tuple | None  # the words' positions in the call's text (None: another prompt)
    blocks: range  # the main blocks (UNet: cross-attention calls) to score
    total: heatmap.HeatmapSum | None  # None: this step is not scored
    model_call: attention_glue.ModelCall | None = None  # joint models
    context_len: int = 0  # UNet: the context rows
    latent_hw: tuple[int, int] = (0, 0)
    seen: int = 0  # UNet: cross-attention calls so far
    ran: bool = False


def _make_wrapper(key: str, spec, adapter, n_cross: int, override, steps_fraction, blocks_fraction):
    def wrapper(executor, *args, **kwargs):
        x, context, to, extra = attention_glue.apply_model_args(args, kwargs)
        run = run_state.state_of(to, key, AttentionHeatmap.NAME)
        rows = cond_rows(to, x.shape[0], provenance.tagged_uuids(to, spec.prompt))
        step, steps = sigma_step(to, AttentionHeatmap.NAME)
        context_len = 0 if context is None else context.shape[1]
        if adapter is not None:
            model_call = attention_glue.describe_call(adapter, executor.class_obj, x, context, extra)
            segments, left, n_blocks = model_call.segments, adapter.left_padded, model_call.n_blocks
            grid = model_call.grid
        else:
            model_call, segments, left, n_blocks = None, ((context_len, context_len, 0),), False, n_cross
            grid = tuple(x.shape[-2:])
        positions = [joint_models.text_positions(segments, spec.streams(e), left) for e in range(len(spec.names))]
        scored = rows and step in heatmap.block_range(steps, *steps_fraction)
        total = run.sum_of(attention_glue.entries(to, x.shape[0], rows), grid) if scored else None
        call = _Call(rows, None if None in positions else tuple(positions),
                     heatmap.block_range(n_blocks, *blocks_fraction), total, model_call, context_len,
                     tuple(x.shape[-2:]))
        return attention_glue.run_model_call(executor, args, kwargs, to, key, call, AttentionHeatmap.NAME, call,
                                             override)

    return wrapper


def _wrong_prompt(spec) -> RuntimeError:
    return RuntimeError(f"{AttentionHeatmap.NAME}: the positive prompt the sampler sees is not the one the words came "
                        f"from ({spec.length} rows). Connect Leakless Heatmap Encode's conditioning as the positive "
                        "prompt of the sampler that uses this model.")


def _make_override(key: str, spec, previous):
    def override(func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        call = to.get(key + attention_glue.CALL_SUFFIX)
        a = attention_glue.AttentionCall(func, previous, args, kwargs)
        if call is None:
            return a.plain()
        call.ran = True
        if call.total is not None:
            _score(call, a, spec)
        return a.plain()  # the heatmap only reads: the result is the original call's

    override.leakless_previous = previous
    return override


def _score(call: _Call, a: attention_glue.AttentionCall, spec) -> None:
    rows = call.rows
    if call.model_call is not None:  # joint attention: the main blocks
        if call.model_call.inside_outer(a) or not call.model_call.is_main(a) or \
                call.model_call.next_block() not in call.blocks:
            return
        if call.positions is None:
            raise _wrong_prompt(spec)
        a.text_first(call.model_call.layout)
        layout = deleaker.Layout(call.model_call.layout.txt_len, call.model_call.grid, call.positions)
        scores = deleaker.entity_scores(a.q[rows], a.k[rows], layout, deleaker.attention_mask_4d(a.mask, rows))
        call.total.add(scores, layout.grid)
        return
    n, keys = a.q.shape[2], a.k.shape[2]
    if keys != call.context_len or keys == n:  # not a cross-attention call
        return
    call.seen += 1
    if call.seen - 1 not in call.blocks:
        return
    if call.positions is None:
        raise _wrong_prompt(spec)
    grid = heatmap.unet_grid(call.latent_hw, n)
    if grid is None:
        return
    mask = heatmap.cross_attention_mask(a.mask, n)
    if mask is not None and mask.shape[0] > 1:
        mask = mask[rows]
    scores = deleaker.entity_scores(a.q[rows], a.k[rows], deleaker.Layout(0, grid, call.positions), mask)
    call.total.add(scores, grid)


def _cross_attentions(model) -> int:
    """The cross-attention calls per call of a UNet (SDXL, SD1.5) model; 0 for any other model."""
    dm = attention_glue.diffusion_model_of(model)
    if dm is None or "UNetModel" not in [c.__name__ for c in type(dm).__mro__]:
        return 0
    return sum(1 for name, m in dm.named_modules() if name.endswith("attn2") and m is not None)


class AttentionHeatmap(io.ComfyNode):
    NAME = "Leakless Attention Heatmap"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessAttentionHeatmap",
            display_name=cls.NAME,
            category="Leakless/heatmap",
            description=(
                "Records where the image looks at each word: the image tokens' attention to each word's tokens, "
                "averaged over heads, the chosen blocks and steps, during any sampler. It does not change the image. "
                "SDXL, SD1.5 and the joint-attention models (FLUX.1/.2, Qwen-Image, Z-Image, Krea 2, SD3, HiDream, "
                "Chroma). Show the maps with Leakless Heatmap Show."),
            inputs=[
                io.Model.Input("model", tooltip="The model; a clone is patched, the input is not changed."),
                ENTITIES.Input("entities", tooltip="From Leakless Heatmap Encode (or DeLeaker Encode), whose "
                               "conditioning must be this sampler's positive prompt."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="The first fraction of the sampling steps to record (0: the first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Record up to this fraction of the steps (1: the last step)."),
                io.Float.Input("first_block", default=0.0, min=0.0, max=1.0, step=0.05, tooltip=(
                    "The first fraction of the model's main blocks to record (UNet: of its cross-attention "
                    "calls).")),
                io.Float.Input("last_block", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Record up to this fraction of the blocks (1: the last block)."),
            ],
            outputs=[
                io.Model.Output("patched", display_name="model", tooltip="The patched clone."),
                HEATMAPS.Output("heatmaps", display_name="heatmaps",
                                tooltip="After sampling, Leakless Heatmap Show shows the maps."),
            ],
        )

    @classmethod
    def execute(cls, model, entities, start_percent, end_percent, first_block, last_block) -> io.NodeOutput:
        check_inputs(cls, locals())
        for first, last, names in ((start_percent, end_percent, ("start_percent", "end_percent")),
                                   (first_block, last_block, ("first_block", "last_block"))):
            if first > last:
                raise LeaklessInputError(cls.NAME, names[1], f"{last:g} is below {names[0]} ({first:g}).",
                                         f"set {names[1]} to at least {names[0]}.")
        if entities is None or not entities.names:
            raise LeaklessInputError(cls.NAME, "entities", "no words.", "name at least one in Leakless Heatmap "
                                     "Encode.")
        n_cross = _cross_attentions(model)
        adapter = None if n_cross else attention_glue.joint_model(cls.NAME, model, "reads text-image attention",
                                                                   SUPPORTED)
        attention_glue.check_prompt_family(cls.NAME, entities, adapter.text_families if adapter else UNET_FAMILIES,
                                           adapter.name if adapter else "a UNet (SDXL / SD1.5)",
                                           "Leakless Heatmap Encode")
        key, results = run_state.new_key(WRAPPER_KEY), HeatmapResults(entities.names)
        patched = attention_glue.install_patch(
            model, WRAPPER_KEY, key, lambda previous: _make_override(key, entities, previous),
            lambda override: _make_wrapper(key, entities, adapter, n_cross, override, (start_percent, end_percent),
                                           (first_block, last_block)),
            _Run, results.record, (cls.NAME, entities.prompt, HeatmapEncode.NAME, "connect Leakless Heatmap "
                                   "Encode's conditioning as the positive prompt of the sampler that uses this model."))
        return io.NodeOutput(patched, results)


class HeatmapShow(io.ComfyNode):
    NAME = "Leakless Heatmap Show"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessHeatmapShow",
            display_name=cls.NAME,
            category="Leakless/heatmap",
            description=("The attention heatmaps of the sampling run that made these images: one MASK per word and "
                         "image (each map divided by its max) and the images overlaid with a heat colour map. "
                         "Connect the sampler's LATENT to 'samples' to tie the maps to it."),
            inputs=[
                HEATMAPS.Input("heatmaps", tooltip="Leakless Attention Heatmap's 'heatmaps' output."),
                io.Image.Input("images", tooltip="The decoded images of that run."),
                io.Float.Input("opacity", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="Heat colour strength where the map is at its max; 0 shows the images."),
                io.Latent.Input("samples", optional=True, tooltip=(
                    "The sampler's LATENT output (recommended): the maps of the run that made it, even when the "
                    "sampler's result is reused. Unconnected: the one sampling with this model in this run of the "
                    "workflow.")),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="Per image, one map per word, in order (0..1)."),
                io.Image.Output("overlay", display_name="overlay",
                                tooltip="Per image, one overlay per word, in order."),
            ],
        )

    @classmethod
    def execute(cls, heatmaps, images, opacity, samples=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        run = heatmaps.find(cls.NAME, samples)
        n, ih, iw = run_results.check_images(cls.NAME, images, run.latent, AttentionHeatmap.NAME)
        maps = run.maps[torch.arange(n) % run.maps.shape[0]]  # one set per image (batches tile like conditioning)
        maps = heatmap.normalised(heatmap.resized(maps, (ih, iw)))
        k = maps.shape[1]
        text = f"Words, in order: {', '.join(run.names)} ({n} image(s) x {k} word(s))."
        return io.NodeOutput(maps.reshape(n * k, ih, iw).to(images.device),
                             heatmap.overlay(images, maps, opacity).to(images.device, images.dtype),
                             ui={"text": [text]})

