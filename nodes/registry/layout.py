"""Where the tokens of one attention call are (pure: no ComfyUI import).

A diffusion model's entry (models.py) says in which order its main attention calls hold their segments: text
streams (the prompt's CONDITIONING rows and any extra rows, such as HiDream's Llama rows), the image, and
reference images after it. `call_layout` turns that into positions for one model call, from what the call holds:
the latent's shape, the conditioning's rows, the extra streams' rows and the images joined to the latent. A method
reads a `Layout`: the segments, the image token grid, and its phrases' positions in the sequence (`with_phrases`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import reduce


@dataclass(frozen=True)
class Segment:
    kind: str  # "text", "image" or "pad" (tokens the model adds after the image)
    start: int
    length: int
    stream: str = ""  # text: "prompt" (the CONDITIONING rows) or an extra stream (families.Family.extra_rows)
    rows: int = 0  # text: how many of its rows are the stream's (the rest is padding the model adds)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Layout:
    """One main attention call's sequence in the call's own order. Tokens past the last segment are reference
    images (when the model has them); `window` is the latent's own part of the image grid (top, left, height,
    width): all of it, except where the model joins another image to the latent (HiDream-E1)."""

    segments: tuple[Segment, ...]
    grid: tuple[int, int]  # the image segment's token grid (h, w), row-major
    window: tuple[int, int, int, int] | None = None
    references: bool = False  # the model call holds reference images, whose tokens follow the last segment
    cell: tuple[int, int] = (1, 1)  # latent pixels per image token (the patch size)
    entities: tuple[tuple[int, ...], ...] = ()  # a method's phrases: each one's positions in the sequence
    _memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # methods' per-layout tensors

    @property
    def length(self) -> int:
        """Tokens in the segments (a main call may hold reference tokens after them)."""
        return max(s.end for s in self.segments)

    @property
    def image_segment(self) -> Segment:
        return next(s for s in self.segments if s.kind == "image")

    @property
    def image(self) -> slice:
        seg = self.image_segment
        return slice(seg.start, seg.end)

    @property
    def n_img(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def text_len(self) -> int:
        return sum(s.length for s in self.segments if s.kind == "text")

    @property
    def image_first(self) -> bool:
        return self.segments[0].kind == "image"

    @property
    def target(self) -> tuple[int, int, int, int]:
        return self.window or (0, 0, *self.grid)

    def text_first(self) -> tuple[Layout, list[int] | None]:
        """This layout with its segments reordered to the methods' canonical order (the text segments, then the
        image, then the rest; reference tokens stay last), and the call positions in that order (None: already
        canonical)."""
        ordered = [s for s in self.segments if s.kind == "text"] + [self.image_segment] + \
            [s for s in self.segments if s.kind not in ("text", "image")]
        if list(self.segments) == ordered:
            return self, None
        order, segments, at = [], [], 0
        for seg in ordered:
            order.extend(range(seg.start, seg.end))
            segments.append(replace(seg, start=at))
            at += seg.length
        return replace(self, segments=tuple(segments)), order

    def fits(self, length: int) -> str:
        """What an attention call of `length` tokens (queries and keys alike) is: "main" (this layout; reference
        tokens after the segments where the call holds references), "other" (shorter: a refiner, text fusion, an
        image-only attention) or "unknown" (longer, and nothing explains the extra tokens)."""
        if length == self.length or (length > self.length and self.references):
            return "main"
        return "other" if length < self.length else "unknown"

    def with_phrases(self, streams: dict, left_padded: bool = False) -> Layout | None:
        """This layout with a method's phrases placed: `streams` maps each text stream to (each phrase's positions
        in the stream's rows, the prompt's row count in that stream). Rows that hold k copies of the prompt's
        (ComfyUI repeats a shorter prompt to batch it with a longer one) hold each phrase in every copy;
        left-padded rows hold it at their end. None when the call's rows cannot hold the prompt's (another prompt).
        """
        placed = None
        for seg in self.segments:
            if seg.kind != "text" or seg.stream not in streams:
                continue
            phrases, length = streams[seg.stream]
            if left_padded and seg.rows >= length:
                copies = [seg.rows - length]
            elif seg.rows >= length and seg.rows % length == 0:
                copies = [r * length for r in range(seg.rows // length)]
            else:
                return None
            at = [tuple(seg.start + c + p for c in copies for p in positions) for positions in phrases]
            placed = at if placed is None else [a + b for a, b in zip(placed, at, strict=True)]
        if placed is None:
            return None
        return replace(self, entities=tuple(placed))

    def image_in_window(self, values):
        """[..., N] values on the image grid -> [..., height, width]: the latent's own window."""
        top, left, h, w = self.target
        return values.reshape(*values.shape[:-1], *self.grid)[..., top:top + h, left:left + w]


def text_then_image(text_len: int, grid: tuple[int, int], entities=()) -> Layout:
    """The plainest joint layout: `text_len` prompt rows, then the image on `grid` (a FLUX.1 call at 256 T5 rows)."""
    return Layout((Segment("text", 0, text_len, "prompt", text_len), Segment("image", text_len, grid[0] * grid[1])),
                  grid, entities=tuple(entities))


def cross_layout(grid: tuple[int, int], entities=()) -> Layout:
    """A cross-attention call (a UNet's): the queries are the image tokens on `grid`, the keys the text rows, where
    `entities` are positions among the keys."""
    return Layout((Segment("image", 0, grid[0] * grid[1]),), grid, entities=tuple(entities))


def context_layout(latent_shape, context_rows: int) -> Layout:
    """A UNet model call: its cross-attention keys are the context's rows (the prompt's stream) and its image the
    latent's grid; each cross-attention call's own grid is that of its level (`cross_layout`)."""
    grid = tuple(latent_shape[-2:])
    return Layout((Segment("text", 0, context_rows, "prompt", context_rows), Segment("image", context_rows,
                                                                                  grid[0] * grid[1])), grid)


def patch_hw(patch) -> tuple[int, int]:
    """A diffusion model's patch size (an int, or one per axis, the last two the image's height and width)."""
    if isinstance(patch, (list, tuple)):
        return int(patch[-2]), int(patch[-1])
    return int(patch), int(patch)


def image_grid(latent_shape, patch: tuple[int, int]) -> tuple[int, int]:
    """The image token grid of a latent [B, C, (T,) H, W]: ComfyUI pads it to whole patches."""
    return math.ceil(latent_shape[-2] / patch[0]), math.ceil(latent_shape[-1] / patch[1])


def attribute(obj, path: str):
    """`obj.a.b.0.c` for path 'a.b.0.c' (list items by index); None where a part is missing."""
    def step(value, name):
        if value is None:
            return None
        if name.isdigit():
            return value[int(name)] if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") else None
        return getattr(value, name, None)

    return reduce(step, path.split("."), obj)
