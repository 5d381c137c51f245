"""Attention heatmaps (pure: no ComfyUI import): where the image rows of a model's attention look at each word.

Each attention call gives deleaker.entity_scores, [B, K, n] (the image rows' probability of each word's tokens, mean
over the word's tokens and heads) on that call's own image grid; `HeatmapSum` brings each call's map bilinearly to
one grid and averages over the calls. `on_image` lays values of a grid over the images they belong to,
`normalised` divides each map by its max, `heat_colours` maps 0..1 to a colour ramp ('turbo'-like), `overlay`
blends it over images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# A coarse 'turbo' ramp (dark blue, blue, cyan, green, yellow, orange, dark red), linearly interpolated.
RAMP = ((0.19, 0.07, 0.23), (0.27, 0.51, 0.96), (0.10, 0.85, 0.78), (0.55, 0.98, 0.26), (0.98, 0.80, 0.21),
        (0.96, 0.40, 0.07), (0.48, 0.02, 0.01))
def block_range(count: int, first: float, last: float) -> range:
    """The indices of `count` items (blocks, steps) from fraction `first` to `last` of them: at least one."""
    start = min(count - 1, max(0, math.floor(first * count + 1e-9)))
    return range(start, max(start + 1, min(count, math.ceil(last * count - 1e-9))))


def cross_attention_mask(mask: torch.Tensor | None, n_queries: int) -> torch.Tensor | None:
    """A cross-attention call's mask ([L], [B, L], [B, 1 or n, L] or [B, H, 1 or n, L]) as [B or 1, H or 1, n, L]."""
    if mask is None:
        return None
    while mask.ndim < 4:
        mask = mask.unsqueeze(-2) if mask.ndim < 3 else mask.unsqueeze(1)
    return mask.expand(*mask.shape[:2], n_queries, mask.shape[-1])


class HeatmapSum:
    """The running mean of per-call maps on one grid (the first call's size, or `grid`)."""

    def __init__(self, grid: tuple[int, int] | None = None):
        self.grid = grid
        self.total: torch.Tensor | None = None  # [B, K, h, w] fp32
        self.count = 0

    def add(self, scores: torch.Tensor, grid: tuple[int, int]) -> None:
        """scores [B, K, n] on `grid` (n = h * w)."""
        b, k, _ = scores.shape
        maps = scores.float().reshape(b, k, *grid)
        if self.grid is None:
            self.grid = grid
        if tuple(grid) != tuple(self.grid):
            maps = F.interpolate(maps, size=self.grid, mode="bilinear", align_corners=False)
        maps = torch.nan_to_num(maps)  # a row with no key left (a masked row) attends nowhere
        self.total = maps.clone() if self.total is None else self.total.add_(maps.to(self.total.device))
        self.count += 1

    @property
    def mean(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.count


def normalised(maps: torch.Tensor) -> torch.Tensor:
    """Each map [..., h, w] divided by its max (a map of zeros stays zeros), in 0..1."""
    top = maps.flatten(-2).amax(-1)[..., None, None]
    return torch.where(top > 0, maps / top.clamp_min(1e-30), torch.zeros_like(maps)).clamp(0, 1)


def on_image(values: torch.Tensor, window, cell: tuple[int, int], scale: int, size: tuple[int, int],
             mode: str = "bilinear") -> torch.Tensor:
    """[B, K, gh, gw] values on an image token grid -> [B, K, *size] on the images: the latent's own `window` of the
    grid (top, left, height, width), each cell `cell` latent pixels of `scale` image pixels, cropped to the image
    (ComfyUI pads a latent to whole patches, so the last row and column of cells may reach past it)."""
    top, left, h, w = window
    values = values[..., top:top + h, left:left + w].float()
    full = (h * cell[0] * scale, w * cell[1] * scale)
    up = F.interpolate(values, size=full, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return up[..., :size[0], :size[1]]


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """values [...] in 0..1 -> colours [..., 3] on RAMP."""
    ramp = torch.tensor(RAMP, dtype=torch.float32, device=values.device)
    x = values.float().clamp(0, 1) * (len(RAMP) - 1)
    low = x.floor().long().clamp(max=len(RAMP) - 2)
    t = (x - low)[..., None]
    return ramp[low] * (1 - t) + ramp[low + 1] * t


def overlay(images: torch.Tensor, maps: torch.Tensor, opacity: float) -> torch.Tensor:
    """images [N, H, W, 3] and their normalised maps [N, K, H, W] -> [N * K, H, W, 3]: each image blended with the
    colour of each map, by the map x opacity (one image per word, the words in order)."""
    n, k = maps.shape[:2]
    base = images[..., :3].float().repeat_interleave(k, dim=0)
    m = maps.reshape(n * k, *maps.shape[2:]).to(base.device)
    a = (m * opacity)[..., None]
    return base * (1 - a) + heat_colours(m) * a
