"""The diffusion models Leakless's sampling-time methods reach: one entry each (pure: no ComfyUI import).

An entry says how ComfyUI's model is recognised (its model config classes, `comfy.supported_models`: Z-Image and
Lumina 2 share a model class but not a config), what kind of attention carries the text ("joint": text and image
tokens in one softmax; "cross": a UNet's cross-attention), the lists of main blocks, the patch size, and the order
of the segments in each main attention call: the text streams, the image (first or after the text; joined images
that widen it), reference images after it. `call_layout` makes a model call's `Layout` from an entry; inputs an
entry lists in `refuses` stop the method with a clear error rather than an edit at a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .layout import Layout, Segment, attribute, image_grid, patch_hw



@dataclass(frozen=True)
class Stream:
    """A run of text rows in a main attention call."""

    name: str  # "prompt": the CONDITIONING rows; else an extra stream of the text family (Family.extra_rows)
    source: str = ""  # the model-call input that holds its rows ("": the conditioning)
    copies: int = 1  # how many times a main call holds it (HiDream: its last Llama layer, then the block's own)
    pad_multiple: str = ""  # the diffusion model's attribute: its rows are padded to a multiple of it (Z-Image)


@dataclass(frozen=True)
class DiffusionModel:
    id: str
    name: str
    classes: tuple[str, ...]  # ComfyUI model configs (comfy.supported_models) that are this model
    text_families: tuple[str, ...]  # the text families (families.py) of its prompts
    attention: str = "joint"  # "joint" or "cross" (a UNet: SDXL, SD1.5)
    blocks: tuple[str, ...] = ()  # joint: the diffusion model's lists of main blocks, in call order
    patch: str = "patch_size"  # the diffusion model's attribute with its patch size (an int or one per axis)
    text: tuple[Stream, ...] = (Stream("prompt"),)  # the text part of a main call, in order
    image_first: bool = False  # main calls put the image before the text
    image_first_when: str = ""  # an attribute path of the diffusion model that, when true, puts the image first
    image_joins: tuple[str, ...] = ()  # model-call inputs joined to the latent along its width (HiDream-E1)
    image_pad_multiple: str = ""  # the diffusion model's attribute: its image tokens are padded to a multiple of it
    references: str = ""  # the model-call input whose reference images' tokens follow the segments (Kontext)
    refuses: tuple[tuple[str, str], ...] = ()  # (model-call input, what it is): layouts left unsupported
    left_padded: bool = False  # ComfyUI pads the prompt rows at their start (FLUX.2)
    latent_scale: int = 8  # image pixels per latent pixel (ComfyUI's latent format says so from 0.33.0 on)
    edits_from_last_double: bool = False  # DeLeaker: edits start at the first step's last double block (FLUX.1)
    comfyui: str = "0.3.75"  # the first ComfyUI of the test matrix that has it
    note: str = ""

    @property
    def joint(self) -> bool:
        return self.attention == "joint"

    def block_counts(self, diffusion_model) -> tuple[int, int]:
        """(main blocks per model call, blocks in the first list)."""
        counts = [len(getattr(diffusion_model, name)) for name in self.blocks]
        return sum(counts), counts[0]

    def refused(self, inputs: dict) -> str | None:
        """What a model call holds that this entry leaves unsupported (None: nothing)."""
        for name, what in self.refuses:
            value = inputs.get(name)
            if value is not None and (not isinstance(value, (list, tuple)) or len(value)):
                return what
        return None


def call_layout(model: DiffusionModel, diffusion_model, latent_shape, context_rows: int, inputs: dict) -> Layout:
    """The layout of a main attention call of one model call: the latent's shape, the conditioning's rows and the
    model call's other inputs (tensors, or lists of them) decide every segment's length."""
    segments, at = [], 0
    text = []
    for stream in model.text:
        rows = context_rows if not stream.source else _rows(inputs.get(stream.source))
        if not rows:
            continue
        multiple = getattr(diffusion_model, stream.pad_multiple, None) if stream.pad_multiple else None
        length = math.ceil(rows / multiple) * multiple if multiple else rows
        text += [(stream.name, rows, length)] * stream.copies
    patch = patch_hw(getattr(diffusion_model, model.patch))
    joined = [inputs[name] for name in model.image_joins if _is_tensor(inputs.get(name))]
    width = latent_shape[-1] + sum(j.shape[-1] for j in joined)
    grid = image_grid((*latent_shape[:-1], width), patch)
    window = (0, 0, *image_grid(latent_shape, patch)) if joined else None
    image_first = model.image_first or bool(model.image_first_when and attribute(diffusion_model,
                                                                                 model.image_first_when))
    if image_first:
        segments.append(Segment("image", 0, grid[0] * grid[1]))
        at = grid[0] * grid[1]
    for name, rows, length in text:
        segments.append(Segment("text", at, length, name, rows))
        at += length
    if not image_first:
        segments.append(Segment("image", at, grid[0] * grid[1]))
    multiple = getattr(diffusion_model, model.image_pad_multiple, None) if model.image_pad_multiple else None
    if multiple and (grid[0] * grid[1]) % multiple:
        image = next(s for s in segments if s.kind == "image")
        pad = Segment("pad", image.end, -(grid[0] * grid[1]) % multiple)
        segments = [s if s.start < image.end else Segment(s.kind, s.start + pad.length, s.length, s.stream, s.rows)
                    for s in segments]
        segments.insert(segments.index(image) + 1, pad)
    references = bool(model.references and inputs.get(model.references) is not None
                      and len(_as_list(inputs[model.references])))
    return Layout(tuple(segments), grid, window, references, patch)


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]


def _rows(value) -> int:
    """The token rows of a text stream's input ([B, L, D], or [B, layers, L, D]); 0 when absent."""
    return int(value.shape[-2]) if _is_tensor(value) else 0


_FLUX_BLOCKS = ("double_blocks", "single_blocks")
_LUMINA_REFERENCES = ("ref_latents", "reference latents (reference captions and images sit between the caption "
                                     "and the image)")
MODELS: tuple[DiffusionModel, ...] = (
    DiffusionModel("flux2", "FLUX.2 dev / Klein", ("Flux2",), ("flux2", "flux2_klein"), blocks=_FLUX_BLOCKS,
                   references="ref_latents", left_padded=True, latent_scale=16,
                   note="The prompt is left-padded to 512 rows."),
    DiffusionModel("chroma", "Chroma", ("Chroma",), ("chroma", "flux"), blocks=_FLUX_BLOCKS, references="ref_latents",
                   edits_from_last_double=True),
    DiffusionModel("flux", "FLUX.1 / Kontext / Krea", ("Flux",), ("flux", "chroma"), blocks=_FLUX_BLOCKS,
                   references="ref_latents", edits_from_last_double=True),
    DiffusionModel("qwen_image", "Qwen-Image / Edit", ("QwenImage",), ("qwen_image",),
                   blocks=("transformer_blocks",), references="ref_latents"),
    DiffusionModel("z_image", "Z-Image", ("ZImage",), ("z_image",), blocks=("layers",),
                   text=(Stream("prompt", pad_multiple="pad_tokens_multiple"),),
                   image_pad_multiple="pad_tokens_multiple", refuses=(_LUMINA_REFERENCES,),
                   note="Single stream; the caption and the image tokens are each padded to a multiple of 32."),
    DiffusionModel("krea2", "Krea 2", ("Krea2",), ("krea2",), blocks=("blocks",), patch="patch", comfyui="0.33.0"),
    DiffusionModel("sd3", "SD3 / SD3.5", ("SD3",), ("sd3",), blocks=("joint_blocks",),
                   note="Text is 77 CLIP rows then the T5 rows: an entity has rows in both."),
    DiffusionModel("hidream", "HiDream", ("HiDream",), ("hidream",),
                   blocks=("double_stream_blocks", "single_stream_blocks"), image_first=True,
                   text=(Stream("prompt"), Stream("llama", "encoder_hidden_states_llama3", copies=2)),
                   image_joins=("image_cond",),
                   note="Image first; an entity's words are in the T5 rows, the Llama rows and each block's Llama "
                        "rows. HiDream-E1 joins its condition image to the latent's right."),
    DiffusionModel("hunyuan_image", "HunyuanImage 2.1", ("HunyuanImage21",), ("hunyuan_image",), blocks=_FLUX_BLOCKS,
                   text=(Stream("prompt"), Stream("byt5", "txt_byt5")),
                   image_first_when="double_blocks.0.flipped_img_txt", latent_scale=32,
                   refuses=(("ref_latent", "a reference latent (its tokens come before the image)"),),
                   note="The ByT5 glyph rows of quoted text follow the prompt's rows, left alone. "
                   "ComfyUI 0.3.75 puts the image first, 0.33.0 the text."),
    DiffusionModel("lumina2", "Lumina 2", ("Lumina2",), ("lumina2",), blocks=("layers",), refuses=(_LUMINA_REFERENCES,),
                   note="Single stream, as Z-Image (the same model class; the config tells them apart)."),
    DiffusionModel("sdxl", "SDXL", ("SDXL",), ("sdxl",), attention="cross"),
    DiffusionModel("sd15", "SD1.5", ("SD15",), ("sd15",), attention="cross"),
)
BY_ID = {m.id: m for m in MODELS}


def names(which=lambda m: True) -> str:
    """'FLUX.2 dev / Klein, Chroma and ...': the models for which `which(model)` holds, for messages."""
    chosen = [m.name for m in MODELS if which(m)]
    return ", ".join(chosen[:-1]) + (" and " if len(chosen) > 1 else "") + chosen[-1]


def model_of(config_classes) -> DiffusionModel | None:
    """The entry of a ComfyUI model whose config class and its bases are `config_classes`, most derived first."""
    for name in config_classes:
        for m in MODELS:
            if name in m.classes:
                return m
    return None
