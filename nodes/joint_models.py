"""The diffusion models whose attention is joint (text and image tokens in one softmax): one adapter each, read by
DeLeaker and the attention heatmap. Pure: no ComfyUI import; the glue (attention_glue.py) hands in what ComfyUI
gives a model call.

An adapter says how to recognise the model (its ComfyUI model class), how many main blocks a step has, how big an
image patch is, where text and image tokens are in each main attention call (text first or image first; the
caption padded; which text streams the call reads) and from which block DeLeaker intervenes. Main calls are told
apart from the rest by their length: every attention call that holds the whole text and the whole image is a main
block, so Z-Image's caption/noise refiners, Krea 2's text fusion and SD3.5-Medium's image-only attention are never
mistaken for one, and blocks are counted per model call where ComfyUI gives no block index (SD3, HiDream, Z-Image
on 0.3.75). Adding a model is one entry in MODELS plus its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REFERENCE_BLOCKS = 57  # FLUX.1: 19 double + 38 single blocks, the model the reference's windows are written for
REFERENCE_HISTORY_START = 12  # the history starts at block 12 of the first step ...
REFERENCE_INTERVENE_START = 18  # ... and the edits at block 18 (FLUX.1's last double block) of the first step


@dataclass(frozen=True)
class JointModel:
    id: str
    name: str
    base_classes: tuple[str, ...]  # ComfyUI model_base classes (a subclass matches: the most derived first)
    blocks: tuple[str, ...]  # the diffusion model's lists of main blocks, in call order
    text_families: tuple[str, ...]  # the text-encoder families (families.py) of its prompts
    patch: str = "patch_size"  # the diffusion model's attribute with the patch size
    image_first: bool = False  # the main calls put the image tokens before the text
    left_padded: bool = False  # ComfyUI pads the prompt rows at the start to a fixed length (FLUX.2)
    pad_multiple: str | None = None  # the diffusion model's attribute: the caption is padded to a multiple of it
    llama_stream: str | None = None  # HiDream: the apply_model input whose rows join the text twice
    edits_from_last_double: bool = False  # FLUX: the edits start at the first step's last double block, as the
    # reference does; elsewhere at the same fraction of the blocks (18 of 57)
    comfyui: str = "0.3.75"
    note: str = ""

    def n_blocks(self, diffusion_model) -> tuple[int, int]:
        """(main blocks per step, blocks in the first list)."""
        counts = [len(getattr(diffusion_model, name)) for name in self.blocks]
        return sum(counts), counts[0]

    def patch_size(self, diffusion_model) -> int:
        return int(getattr(diffusion_model, self.patch))

    def text_segments(self, diffusion_model, context_len: int, llama_len: int | None) -> tuple[tuple, ...]:
        """The text part of a main call as (rows in the call, of them the conditioning's, stream) segments in
        order; stream 0 is the prompt's CONDITIONING rows, stream 1 HiDream's Llama rows (its final layer, then
        the block's own layer). Rows past the conditioning's are a caption padding."""
        if self.llama_stream:
            llama = (llama_len or 0, llama_len or 0, 1)
            return (context_len, context_len, 0), llama, llama
        multiple = getattr(diffusion_model, self.pad_multiple, None) if self.pad_multiple else None
        return ((math.ceil(context_len / multiple) * multiple if multiple else context_len, context_len, 0),)


@dataclass(frozen=True)
class CallLayout:
    """Where the tokens of one main attention call are: the text (txt_len rows, as a text-first sequence) and the
    image grid; image_first: the call's own order is [image, text, rest]."""

    txt_len: int
    grid: tuple[int, int]
    image_first: bool = False

    @property
    def n_img(self) -> int:
        return self.grid[0] * self.grid[1]

    def is_main(self, length: int) -> bool:
        return length >= self.txt_len + self.n_img


def image_grid(latent_shape, patch: int) -> tuple[int, int]:
    """The image token grid of a latent [B, C, (T,) H, W] (ComfyUI pads to whole patches)."""
    return math.ceil(latent_shape[-2] / patch), math.ceil(latent_shape[-1] / patch)


def text_positions(segments, streams, left_padded: bool = False) -> tuple[int, ...] | None:
    """Positions in a main call's text of a phrase given per stream as {stream: (its positions, the prompt's rows in
    that stream)}. Conditioning rows that hold k copies of the prompt's (ComfyUI repeats a shorter prompt to batch
    it with a longer one) have the phrase in each copy; left-padded rows have it at their end. None when the rows
    cannot hold the prompt's (another prompt)."""
    out, offset = [], 0
    for rows, context, stream in segments:
        positions, length = streams[stream]
        if left_padded and context >= length:
            copies = [context - length]
        elif context >= length and context % length == 0:
            copies = [r * length for r in range(context // length)]
        else:
            return None
        out.extend(offset + c + p for c in copies for p in positions)
        offset += rows
    return tuple(out)


@dataclass(frozen=True)
class Schedule:
    """DeLeaker's windows over one sampling run's block-steps (step * n_blocks + block), as fractions of the
    reference's (FLUX.1, 57 blocks, 20 steps): the mask history from block 12 of the first step to the end of the
    history steps (12 of 20), the edits from block 18 of the first step (FLUX: its last double block) to the end."""

    n_blocks: int
    steps: int
    history_start: int
    history_end: int
    intervene_start: int

    @classmethod
    def of(cls, model: JointModel, n_blocks: int, n_first: int, steps: int, history: float) -> Schedule:
        start = round(REFERENCE_HISTORY_START / REFERENCE_BLOCKS * n_blocks)
        intervene = n_first - 1 if model.edits_from_last_double else \
            round(REFERENCE_INTERVENE_START / REFERENCE_BLOCKS * n_blocks)
        return cls(n_blocks, steps, start, round(history * steps) * n_blocks, intervene)

    def block_step(self, step: int, block: int) -> int:
        return step * self.n_blocks + block

    def in_history(self, b: int) -> bool:
        return self.history_start <= b < self.history_end

    def intervenes(self, b: int) -> bool:
        return b >= self.intervene_start

    def history_steps(self) -> int:
        return self.history_end // self.n_blocks


_FLUX_BLOCKS = ("double_blocks", "single_blocks")
MODELS: tuple[JointModel, ...] = (
    JointModel("flux2", "FLUX.2 dev / Klein", ("Flux2",), _FLUX_BLOCKS, ("flux2", "flux2_klein"), left_padded=True,
               note="The prompt is left-padded to 512 rows."),
    JointModel("chroma", "Chroma", ("Chroma",), _FLUX_BLOCKS, ("chroma", "flux"), edits_from_last_double=True),
    JointModel("flux", "FLUX.1 / Kontext / Krea", ("Flux",), _FLUX_BLOCKS, ("flux", "chroma"),
               edits_from_last_double=True),
    JointModel("qwen_image", "Qwen-Image / Edit", ("QwenImage",), ("transformer_blocks",), ("qwen_image",)),
    JointModel("z_image", "Z-Image", ("Lumina2",), ("layers",), ("z_image",), pad_multiple="pad_tokens_multiple",
               note="Single stream; the caption is padded to a multiple of 32."),
    JointModel("krea2", "Krea 2", ("Krea2",), ("blocks",), ("krea2",), patch="patch", comfyui="0.33.0"),
    JointModel("sd3", "SD3 / SD3.5", ("SD3",), ("joint_blocks",), ("sd3",),
               note="Text is 77 CLIP rows then the T5 rows: an entity has rows in both."),
    JointModel("hidream", "HiDream", ("HiDream",), ("double_stream_blocks", "single_stream_blocks"), ("hidream",),
               image_first=True, llama_stream="encoder_hidden_states_llama3",
               note="Image first; an entity's words are in the T5 rows, the Llama rows and each block's Llama rows."),
)
BY_ID = {m.id: m for m in MODELS}
NAMES = ", ".join(m.name for m in MODELS)


def joint_model_of(class_names) -> JointModel | None:
    """The adapter for a ComfyUI model whose class and base classes are `class_names`, most derived first."""
    for name in class_names:
        for m in MODELS:
            if name in m.base_classes:
                return m
    return None
