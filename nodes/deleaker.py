"""DeLeaker (Ventura, Toker et al., 2025) for FLUX joint attention: the algorithm, memory-bounded.

Pure PyTorch; the ComfyUI glue is ``deleaker_nodes.py``. The reference implementation materialises the full
B x H x L x L logits and a same-sized history in every layer; here nothing of that size exists:

- entity scores (image query -> entity text tokens, averaged over the entity's tokens and the heads) need only the
  image rows' log-sum-exp, computed over query chunks of bounded size;
- the mask history is the running mean of those scores ([B, K, N]), which equals the reference's running mean of
  the full probabilities read at the same columns (the mean is linear);
- text edits are key edits: blocking entity j's tokens for rows of M_i drops those keys, and multiplying the
  self-entity logits by alpha equals multiplying those key vectors by alpha, so each group of image rows with the
  same entity membership is one attention call over edited keys;
- the image-image statistics need probabilities only on the M_i x M_j blocks (with each row's edited normaliser),
  and the resulting blocks become a boolean mask over that group's rows.
Softmax and statistics run in fp32. Every edited row keeps the non-entity text tokens, so no row is all -inf.

Reference semantics kept (tokeron/DeLeaker ``attention_processor.py``): masks threshold head-averaged
post-softmax probabilities at mean + beta1 * std (unbiased), then 3x3 opening and 3x3 closing twice; per entity
pair (i, j) in order: cross image->text blocked, self image->text logits x alpha, cross image->image blocked where
the head-averaged probability (as left by the previous pairs) exceeds mean + beta2 * std of its non-zero values
on the M_i x M_j block. Differences, all documented options or fixes: statistics are per sample (the reference
pools the batch, identical at batch 1); morphology runs on the true h x w grid (the reference skips non-square
grids); alpha is applied once per entity unless ``alpha_per_pair`` (the reference's per-pair compounding,
alpha^(K-1) for K entities); ``overlap="exclusive"`` gives a contested image token to the entity with the higher
score instead of blocking both entities' tokens there (the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 25  # fp32 logits per chunk (128 MiB): bounds every temporary of this module


@dataclass(frozen=True)
class Settings:
    beta_text: float = 1.0  # mask threshold: mean + beta_text * std
    beta_image: float = 1.0  # image-image threshold: mean + beta_image * std
    alpha: float = 1.2  # self-identity reinforcement of image->own-text logits
    cross_text: bool = True  # block image(M_i) -> text(T_j)
    self_text: bool = True  # multiply image(M_i) -> text(T_i) logits by alpha
    image_image: bool = True  # block strong image(M_i) -> image(M_j) attention
    alpha_per_pair: bool = False  # reference: alpha once per entity pair (alpha^(K-1))
    overlap: str = "reference"  # "reference" (block both) | "exclusive" (higher score wins)
    smoothing: bool = True  # 3x3 opening, then closing x2

    @property
    def edits_anything(self) -> bool:
        return self.cross_text or (self.self_text and self.alpha != 1.0) or self.image_image


@dataclass(frozen=True)
class Layout:
    """Where things are in the joint sequence of one attention call."""

    txt_len: int  # text tokens come first
    grid: tuple[int, int]  # image token grid (h, w); image tokens follow the text
    entities: tuple[tuple[int, ...], ...]  # text positions of each entity's tokens
    _index: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def entity_index(self, e: int, device) -> torch.Tensor:
        """Entity e's text positions as an index tensor, made once per device."""
        key = (e, str(device))
        if key not in self._index:
            self._index[key] = torch.tensor(self.entities[e], device=device)
        return self._index[key]

    @property
    def n_img(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def img(self) -> slice:
        return slice(self.txt_len, self.txt_len + self.n_img)


def _rows_per_chunk(heads: int, keys: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, heads * keys))


def entity_scores(q: torch.Tensor, k: torch.Tensor, layout: Layout) -> torch.Tensor:
    """mean over heads and each entity's tokens of softmax(q k^T / sqrt(d)) on the image rows: [B, K, N].

    q, k: [B, H, L, D] after RoPE. Only [B, H, chunk, L] logits exist at a time.
    """
    b, h, length, d = q.shape
    scale = 1.0 / math.sqrt(d)
    cols = [layout.entity_index(e, q.device) for e in range(len(layout.entities))]
    kf = k.float()
    out = torch.empty(b, len(cols), layout.n_img, device=q.device, dtype=torch.float32)
    step = _rows_per_chunk(h, length)
    for start in range(0, layout.n_img, step):
        rows = slice(layout.txt_len + start, layout.txt_len + min(start + step, layout.n_img))
        logits = torch.matmul(q[:, :, rows].float(), kf.transpose(-1, -2)) * scale
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        for e, c in enumerate(cols):
            out[:, e, start:start + logits.shape[2]] = (logits[..., c] - lse).exp().mean(dim=(-1, 1))
    return out


class MaskHistory:
    """Running mean of entity scores over the history window (one per sampling run)."""

    def __init__(self):
        self.mean: torch.Tensor | None = None
        self.count = 0
        self.epoch = 0  # bumped by reset: (epoch, count) names one state of the history

    def reset(self):
        self.mean, self.count = None, 0
        self.epoch += 1

    def update(self, scores: torch.Tensor):
        scores = _fill_nan(scores)
        if self.mean is None or self.mean.shape != scores.shape:
            self.mean, self.count = scores.clone(), 1
            return
        n = self.count
        self.mean = self.mean * (n / (n + 1)) + scores * (1 / (n + 1))
        self.count = n + 1


def _fill_nan(x: torch.Tensor) -> torch.Tensor:
    if not torch.isnan(x).any():
        return x
    finite = x[~torch.isnan(x)]
    return torch.nan_to_num(x, nan=float(finite.mean()) if finite.numel() else 0.0)


def morphological_clean(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """3x3 opening, then 3x3 closing applied twice (erode/dilate with neutral borders, as OpenCV does).

    mask: [..., N] bool on the h x w grid (row-major) -> same shape.
    """
    h, w = grid
    x = mask.reshape(-1, 1, h, w).float()

    def dilate(t):
        return F.max_pool2d(t, 3, stride=1, padding=1)

    def erode(t):
        return -F.max_pool2d(-t, 3, stride=1, padding=1)

    x = dilate(erode(x))
    x = erode(erode(dilate(dilate(x))))
    return x.reshape(mask.shape) > 0.5


def entity_masks(scores: torch.Tensor, layout: Layout, settings: Settings) -> torch.Tensor:
    """[B, K, N] scores -> [B, K, N] boolean image masks (per-sample mean + beta * std, unbiased std)."""
    scores = _fill_nan(scores)
    thr = scores.mean(dim=-1, keepdim=True) + settings.beta_text * scores.std(dim=-1, keepdim=True)
    masks = scores > thr
    if settings.smoothing:
        masks = morphological_clean(masks, layout.grid)
    if settings.overlap == "exclusive" and masks.shape[1] > 1:
        best = scores.argmax(dim=1, keepdim=True)
        owner = torch.zeros_like(masks).scatter_(1, best, True)
        contested = masks.sum(dim=1, keepdim=True) > 1
        masks = masks & (~contested | owner)
    return masks


# ----------------------------------------------------------------------------------------------------------
# The edited attention


@dataclass
class _RowEdits:
    """Edits of one sample's image rows: per row, the entity tokens blocked and the self-token multiplier, plus
    image->image blocks stored compactly for the rows of any mask. Indexed by image row (0..N-1)."""

    n_entities: int
    n_img: int
    device: torch.device
    blocked_text: torch.Tensor = field(init=False)  # [N, K] bool: tokens of entity k blocked for the row
    alpha_power: torch.Tensor = field(init=False)  # [N, K] float: exponent of alpha on entity k's logits
    slot: torch.Tensor = field(init=False)  # [N] long: the row's line in `blocked_image`, -1 for none
    blocked_image: torch.Tensor | None = None  # [R, N] bool: image keys blocked for the row

    def __post_init__(self):
        self.blocked_text = torch.zeros(self.n_img, self.n_entities, dtype=torch.bool, device=self.device)
        self.alpha_power = torch.zeros(self.n_img, self.n_entities, device=self.device)
        self.slot = torch.full((self.n_img,), -1, dtype=torch.long, device=self.device)

    def block_image(self, rows: torch.Tensor, blocks: torch.Tensor):
        new = rows[self.slot[rows] < 0]
        if new.numel():
            start = 0 if self.blocked_image is None else self.blocked_image.shape[0]
            self.slot[new] = torch.arange(start, start + new.numel(), device=self.device)
            grow = torch.zeros(new.numel(), self.n_img, dtype=torch.bool, device=self.device)
            self.blocked_image = grow if self.blocked_image is None else torch.cat([self.blocked_image, grow])
        self.blocked_image[self.slot[rows]] |= blocks

    def image_blocks(self, rows: torch.Tensor) -> torch.Tensor | None:
        """[len(rows), N] bool of blocked image keys, or None when no row has any."""
        if self.blocked_image is None:
            return None
        slots = self.slot[rows]
        has = slots >= 0
        if not bool(has.any()):
            return None
        out = torch.zeros(rows.numel(), self.n_img, dtype=torch.bool, device=self.device)
        out[has] = self.blocked_image[slots[has]]
        return out

    @property
    def edited_rows(self) -> torch.Tensor:
        rows = self.blocked_text.any(dim=1) | (self.alpha_power != 0).any(dim=1) | (self.slot >= 0)
        return rows.nonzero().flatten()


def _edited_logits(q_rows, k, rows, edits: _RowEdits, layout: Layout, alpha: float, scale: float):
    """fp32 logits [H, len(rows), L] of one sample's image rows with the current edits applied."""
    logits = torch.matmul(q_rows.float(), k.float().transpose(-1, -2)) * scale
    for e in range(len(layout.entities)):
        cols = layout.entity_index(e, logits.device)
        power = edits.alpha_power[rows, e]
        blocked = edits.blocked_text[rows, e]
        if bool((power != 0).any()) or bool(blocked.any()):
            sub = logits[:, :, cols] * (alpha ** power)[None, :, None]
            logits[:, :, cols] = sub.masked_fill(blocked[None, :, None], float("-inf"))
    blocks = edits.image_blocks(rows)
    if blocks is not None:
        logits[:, :, layout.img] = logits[:, :, layout.img].masked_fill(blocks[None], float("-inf"))
    return logits


def _pair_image_blocks(q, k, mi, mj, edits, layout, settings, scale):
    """For entity pair (i, j): which image keys to block for rows of M_i (keys in M_j) and rows of M_j (keys in
    M_i): head-averaged probability above mean + beta*std of the block's non-zero values, with probabilities as
    the edits of the previous pairs leave them. Each row's normaliser is computed once for both directions."""
    union = (mi | mj).nonzero().flatten()
    if union.numel() == 0 or not bool(mi.any()) or not bool(mj.any()):
        return []
    cols = {"i": mj.nonzero().flatten(), "j": mi.nonzero().flatten()}
    parts = {"i": [], "j": []}
    h = q.shape[0]
    step = _rows_per_chunk(h, k.shape[1])
    for start in range(0, union.numel(), step):
        r = union[start:start + step]
        logits = _edited_logits(q[:, layout.txt_len + r], k, r, edits, layout, settings.alpha, scale)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        p_img = (logits[..., layout.img] - lse).exp().mean(dim=0)  # [len(r), N]
        for side, member in (("i", mi[r]), ("j", mj[r])):
            if bool(member.any()):
                parts[side].append(p_img[member][:, cols[side]])
    out = []
    for side, rows in (("i", mi.nonzero().flatten()), ("j", mj.nonzero().flatten())):
        p = torch.cat(parts[side])  # [|M_src|, |M_dst|]
        nz = p[p != 0]
        if nz.numel() == 0:
            continue
        thr = nz.mean() + settings.beta_image * nz.std()
        full = torch.zeros(rows.numel(), layout.n_img, dtype=torch.bool, device=q.device)
        full[:, cols[side]] = p > thr
        out.append((rows, full))
    return out


def plan_edits(q: torch.Tensor, k: torch.Tensor, masks: torch.Tensor, layout: Layout, settings: Settings):
    """The row edits of one sample (q, k: [H, L, D]; masks: [K, N]), pair by pair as the reference does."""
    n_ent = masks.shape[0]
    edits = _RowEdits(n_ent, layout.n_img, q.device)
    scale = 1.0 / math.sqrt(q.shape[-1])
    for i, j in combinations(range(n_ent), 2):
        new_blocks = []
        if settings.image_image:  # statistics on probabilities as the previous pairs left them
            new_blocks = _pair_image_blocks(q, k, masks[i], masks[j], edits, layout, settings, scale)
        if settings.cross_text:
            edits.blocked_text[masks[i], j] = True
            edits.blocked_text[masks[j], i] = True
        if settings.self_text and settings.alpha != 1.0:
            for e in (i, j):
                if settings.alpha_per_pair:
                    edits.alpha_power[masks[e], e] += 1
                else:
                    edits.alpha_power[masks[e], e] = 1
        for rows, blocks in new_blocks:
            edits.block_image(rows, blocks)
    return edits


def edited_attention_rows(q, k, v, edits: _RowEdits, layout: Layout, settings: Settings):
    """Attention output [H, R, D] of one sample's edited image rows (and their indices), one fused call per group
    of rows that share text edits; image->image blocks enter as a boolean mask over the group's rows."""
    rows = edits.edited_rows
    if rows.numel() == 0:
        return rows, None
    h, length, d = k.shape
    out = torch.empty(h, rows.numel(), d, device=q.device, dtype=torch.float32)
    pattern = torch.cat([edits.blocked_text[rows].float(), edits.alpha_power[rows]], dim=1)
    groups = torch.unique(pattern, dim=0)
    kf, vf = k.float(), v.float()
    for g in groups:
        member = (pattern == g).all(dim=1)
        idx = member.nonzero().flatten()
        keys = kf.clone()
        keep = torch.ones(length, dtype=torch.bool, device=q.device)
        for e in range(len(layout.entities)):
            cols = layout.entity_index(e, q.device)
            if bool(g[e]):
                keep[cols] = False
            power = float(g[len(layout.entities) + e])
            if power:
                keys[:, cols] = keys[:, cols] * settings.alpha ** power
        group_rows = rows[idx]
        step = _rows_per_chunk(h, length)
        for start in range(0, group_rows.numel(), step):
            chunk = group_rows[start:start + step]
            blocks = edits.image_blocks(chunk)
            mask = None
            if blocks is not None or not bool(keep.all()):
                mask = keep.expand(chunk.numel(), length).clone()
                if blocks is not None:
                    mask[:, layout.img] &= ~blocks
                mask = mask[None, None]
            o = F.scaled_dot_product_attention(q[:, layout.txt_len + chunk].float()[None], keys[None], vf[None],
                                               attn_mask=mask)
            out[:, idx[start:start + chunk.numel()]] = o[0]
    return rows, out


def deleaker_attention(q, k, v, base, masks: torch.Tensor, layout: Layout, settings: Settings,
                       batch_rows) -> torch.Tensor:
    """Attention output [B, L, H*D] with DeLeaker's edits in the image-query rows of `batch_rows`.

    q, k, v: [B, H, L, D]; masks: [len(batch_rows), K, N]. ``base(batch_index, query_index)`` runs the unedited
    attention (whatever backend or chained override the model uses) for those batch rows and query rows
    (``None``: all) and returns [len(batch_index), rows, H*D]; it is never asked for the rows edited here.
    """
    b_count, heads, length, d = q.shape
    edited = {}
    if settings.edits_anything and len(layout.entities) >= 2:
        for m, b in enumerate(batch_rows):
            plan = plan_edits(q[b], k[b], masks[m], layout, settings)
            rows, rows_out = edited_attention_rows(q[b], k[b], v[b], plan, layout, settings)
            if rows_out is not None:
                edited[b] = (layout.txt_len + rows, rows_out.transpose(0, 1).reshape(-1, heads * d))
    plain = [b for b in range(b_count) if b not in edited]
    out = None
    if plain:
        part = base(plain, None)
        out = part.new_empty(b_count, length, part.shape[-1])
        out[plain] = part
    for b, (rows, rows_out) in edited.items():
        keep = torch.ones(length, dtype=torch.bool, device=q.device)
        keep[rows] = False
        part = base([b], keep.nonzero().flatten())
        if out is None:
            out = part.new_empty(b_count, length, part.shape[-1])
        out[b, keep] = part[0]
        out[b, rows] = rows_out.to(out.dtype)
    return out
