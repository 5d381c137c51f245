"""A labelled image grid (for token-trace results). Pure PyTorch + Pillow; no ComfyUI import."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .settings import Setting

COLUMNS = Setting("columns", "int", 0, "Images per row (at most the number of images); {default} picks a "
                  "near-square grid.", min=0, max=64)
FONT_SIZE = Setting("font_size", "int", 20, "Label text size in pixels (default {default}); raise it for large "
                    "images.", min=8, max=128)

ELLIPSIS = "\u2026"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _longest_fit(draw, text: str, font, width: int, suffix: str = "") -> int:
    """The length of the longest prefix of `text` that, followed by `suffix`, is at most `width` pixels wide (0 if
    none): a binary search, so log2(len(text)) measurements."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + suffix, font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut(draw, text: str, font, width: int) -> str:
    """`text` shortened to end in '…' within `width` pixels."""
    return text[:_longest_fit(draw, text, font, width, ELLIPSIS)].rstrip() + ELLIPSIS


def label_lines(draw, label: str, font, width: int, max_lines: int) -> list[str]:
    """`label`'s words in at most `max_lines` lines of at most `width` pixels: as many whole words per line as fit;
    a word wider than a line gets a line of its own, cut to end in '…'; a label longer than the lines ends in '…'.
    Only what fits is measured (at most `width` characters a line, a pixel each at least, by binary search), so the
    time does not grow with the label's length."""
    width = max(width, 0)
    flat = " ".join(label.split())
    lines, pos = [], 0
    while pos < len(flat) and len(lines) < max_lines:
        window = flat[pos:pos + width]
        end = pos + _longest_fit(draw, window, font, width)
        if end >= len(flat) or flat[end] == " ":  # whole words fit
            lines.append(flat[pos:end])
            pos = end + 1
            continue
        space = flat.rfind(" ", pos, end)
        if space > pos:  # break after the last word that fits
            lines.append(flat[pos:space])
            pos = space + 1
        else:  # a word wider than the line: cut, and go on after it
            lines.append(_cut(draw, window, font, width))
            after = flat.find(" ", end)
            pos = len(flat) if after < 0 else after + 1
    if pos < len(flat) and lines:
        lines[-1] = _cut(draw, lines[-1].rstrip(ELLIPSIS), font, width)
    return lines


def labels_for_batch(labels: list[str], n: int) -> list[str]:
    """One label per image of a batch of `n` made from len(labels) conditionings: ComfyUI tiles a smaller
    conditioning batch over the latent batch (c1..cN, c1..cN), so the labels cycle the same way."""
    if not labels or n % len(labels):
        raise ValueError(f"{n} images do not divide among {len(labels)} labels")
    return [labels[i % len(labels)] for i in range(n)]


def _layout(n: int, columns: int) -> tuple[int, int]:
    cols = min(columns, n) if columns > 0 else max(1, math.ceil(math.sqrt(n)))
    return cols, math.ceil(n / cols)


def _line_height(font_size: int) -> int:
    return font_size + 4


def _label_height(font_size: int, lines: int) -> int:
    return _line_height(font_size) * max(1, lines) + 8


def grid_size(n: int, h: int, w: int, columns: int = COLUMNS.default, font_size: int = FONT_SIZE.default,
              gap: int = 4, max_lines: int = 3) -> tuple[int, int]:
    """(width, height) in pixels of the grid of `n` images of h x w with labels of `max_lines` lines: the most
    labelled_grid makes, known before any drawing."""
    cols, rows = _layout(n, columns)
    return cols * w + (cols - 1) * gap, rows * (h + _label_height(font_size, max_lines)) + (rows - 1) * gap


def labelled_grid(images: torch.Tensor, labels: list[str], columns: int = COLUMNS.default,
                  font_size: int = FONT_SIZE.default, gap: int = 4, max_lines: int = 3, on_image=None) -> torch.Tensor:
    """`images` [N, H, W, C] in [0, 1] -> one grid image [1, H', W', C] with each label under its image, in at
    most `max_lines` lines of the image's width (see label_lines); at most N columns. ``on_image()`` is called
    after each image is laid out (progress; it may raise to stop)."""
    n, h, w, c = images.shape
    cols, _ = _layout(n, columns)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    laid_out: dict[str, list[str]] = {}  # a label repeated over the batch is laid out once
    wrapped = []
    for label in labels:
        if label not in laid_out:
            laid_out[label] = label_lines(probe, label, font, w - 8, max_lines)
        wrapped.append(laid_out[label])
    line_h = _line_height(font_size)
    lines = max((len(x) for x in wrapped), default=1)
    label_h = _label_height(font_size, lines)
    grid = Image.new("RGB", grid_size(n, h, w, columns, font_size, gap, lines), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for i in range(n):
        x, y = (i % cols) * (w + gap), (i // cols) * (h + label_h + gap)
        grid.paste(Image.fromarray(pixels[i]), (x, y))
        for j, line in enumerate(wrapped[i]):
            draw.text((x + 4, y + h + 4 + j * line_h), line, fill=(235, 235, 235), font=font)
        if on_image is not None:
            on_image()
    out = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
    if c == 4:
        out = torch.cat([out, torch.ones_like(out[..., :1])], dim=-1)
    return out.to(images.device)
