"""A labelled image grid (for token-trace results). Pure PyTorch + Pillow; no ComfyUI import."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def _fit(draw, line: str, font, width: int, cut: bool = False) -> str:
    """`line`, shortened to end in '…' if it is wider than `width` (or `cut` is set)."""
    if not cut and draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "\u2026", font=font) > width:
        line = line[:-1]
    return line.rstrip() + "\u2026"


def labels_for_batch(labels: list[str], n: int) -> list[str]:
    """One label per image of a batch of `n` made from len(labels) conditionings: ComfyUI tiles a smaller
    conditioning batch over the latent batch (c1..cN, c1..cN), so the labels cycle the same way."""
    if not labels or n % len(labels):
        raise ValueError(f"{n} images do not divide among {len(labels)} labels")
    return [labels[i % len(labels)] for i in range(n)]


def labelled_grid(images: torch.Tensor, labels: list[str], columns: int = 0, font_size: int = 20,
                  gap: int = 4, max_lines: int = 3) -> torch.Tensor:
    """`images` [N, H, W, C] in [0, 1] -> one grid image [1, H', W', C] with each label under its image, in at
    most `max_lines` lines of the image's width (a longer label ends in '…'); at most N columns."""
    n, h, w, c = images.shape
    cols = min(columns, n) if columns > 0 else max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = []
    for label in labels:
        lines = _wrap(probe, label, font, w - 8)
        kept = [_fit(probe, line, font, w - 8) for line in lines[:max_lines]]
        if len(lines) > max_lines:
            kept[-1] = _fit(probe, kept[-1].rstrip("\u2026"), font, w - 8, cut=True)
        wrapped.append(kept)
    line_h = font_size + 4
    label_h = line_h * max(1, max((len(x) for x in wrapped), default=1)) + 8
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * (h + label_h) + (rows - 1) * gap), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for i in range(n):
        x, y = (i % cols) * (w + gap), (i // cols) * (h + label_h + gap)
        grid.paste(Image.fromarray(pixels[i]), (x, y))
        for j, line in enumerate(wrapped[i]):
            draw.text((x + 4, y + h + 4 + j * line_h), line, fill=(235, 235, 235), font=font)
    out = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
    if c == 4:
        out = torch.cat([out, torch.ones_like(out[..., :1])], dim=-1)
    return out.to(images.device)
