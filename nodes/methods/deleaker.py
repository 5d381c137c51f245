"""DeLeaker (Ventura, Toker et al., 2025) for joint text-image attention: the algorithm, memory-bounded, at about
the cost of the model's own attention call.

Pure PyTorch; the ComfyUI glue is ``deleaker_nodes.py``. The reference implementation materialises the full
B x H x L x L logits and a same-sized history in every layer; here nothing of that size exists. Everything rests
on the row log-sum-exp (lse) that fused attention kernels return with their output (kernels.py):

- entity scores (image query -> entity text tokens, averaged over the entity's tokens and the heads) are
  exp(q.k_entity * scale - lse) on the entity columns only (`scores_from_lse`); where no lse comes with the call
  (the model's attention is not the fused kernel), one exact lse pass over the image rows (`entity_scores`);
- the mask history is the running mean of those scores ([B, K, N]), which equals the reference's running mean of
  the full probabilities read at the same columns (the mean is linear);
- text edits (blocking entity j's tokens for rows of M_i, the self-entity logits x alpha) and the image-image cut
  touch only a few key columns per row: the entity tokens, and for the cut the image keys of the other entities'
  masks (M_j). Each group of image rows with the same entity membership (a MaskPlan, made once per mask state) runs
  ONE fused call over every other key (the "bulk": those columns masked off, a broadcast mask, no key copy), the
  few columns explicitly in fp32 with their edits, and merges the two by their log-sum-exp:
  out = (e^lse_bulk out_bulk + sum_c e^s_c v_c) / (e^lse_bulk + sum_c e^s_c);
- the image-image statistics need probabilities only on the M_i x M_j blocks: those explicit logits and each row's
  edited normaliser (the bulk's lse with the explicit columns), pair by pair in the reference's order; the cut
  reuses the same logits;
- in the mask-history window, where the masks of a call come from its own scores, one fused call over the image
  rows with the entity tokens masked off gives the scores and the bulk of every image row at once
  (`image_rows_pass`); a cut then removes its keys' weights from that bulk (signed weights), a row whose bulk loses
  most of its mass that way is recomputed without those keys (`GUARD`), so no cancellation costs precision.
Rows DeLeaker leaves alone (text rows, image rows in no mask after the window, other batch rows) run the model's
own attention (`attend`: whatever backend or chained override it uses). Softmax, merges and statistics run in
fp32; a mask the model itself passes to attention is kept everywhere (added after the edits). Per-chunk
temporaries of the explicit columns stay under a quarter of q's size and CHUNK_ELEMENTS.

Reference semantics kept (tokeron/DeLeaker ``attention_processor.py``): masks threshold head-averaged
post-softmax probabilities at mean + beta1 * std (unbiased), then 3x3 opening and 3x3 closing twice; per entity
pair (i, j) in order: cross image->text blocked, self image->text logits x alpha, cross image->image blocked where
the head-averaged probability (as left by the previous pairs) exceeds mean + beta2 * std of its non-zero values
on the M_i x M_j block. Differences, all documented options or fixes: statistics are per sample (the reference
pools the batch, identical at batch 1); morphology runs on the true h x w grid (the reference skips non-square
grids); alpha is applied once per entity unless ``alpha_per_pair`` (the reference's per-pair compounding,
alpha^(K-1) for K entities); ``overlap="exclusive"`` gives a contested image token to the entity with the highest
score among those whose masks hold it, instead of blocking both entities' tokens there (the reference). The
image-image cut is applied inside M_i x M_j only: below beta2 of about -0.6 the reference's threshold turns
negative and its cut reaches every image row's image keys, which the pack reads as unintended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

from ..registry.layout import Layout
from . import kernels

CHUNK_ELEMENTS = 1 << 25  # fp32 logits per chunk (128 MiB): bounds every per-chunk temporary of this module
GUARD = {torch.float32: 0.25, torch.float64: 0.25}  # a row's edited normaliser must keep this share of its bulk
GUARD_LOW_PRECISION = 0.5  # the same for 16-bit inputs (a rounded bulk output is amplified by at most 1 / GUARD)


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


def entity_index(layout: Layout, e: int, device) -> torch.Tensor:
    """Entity e's positions as an index tensor, made once per layout and device."""
    key = ("entity", e, str(device))
    if key not in layout._memo:
        layout._memo[key] = torch.tensor(layout.entities[e], device=device)
    return layout._memo[key]


def entity_indicators(layout: Layout, length: int, width: int, device) -> torch.Tensor:
    """[length, width] fp32: column e is 1 / |tokens of e| on entity e's positions (the values that make an
    attention call return each entity's mean probability), made once per layout and device."""
    key = ("indicators", length, width, str(device))
    if key not in layout._memo:
        indicators = torch.zeros(length, width, device=device)
        for e, tokens in enumerate(layout.entities):
            indicators[list(tokens), e] = 1.0 / len(tokens)
        layout._memo[key] = indicators
    return layout._memo[key]


def _softmax_parts_(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim with one exp pass, in place: (exp(logits - max), 1 / row sums)."""
    weights = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return weights, weights.sum(dim=-1, keepdim=True).reciprocal_()


def _rows_per_chunk(heads: int, keys: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, heads * keys))


def entity_columns(layout: Layout, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every entity token's key position, sorted, once each ([E] long), and each entity's tokens as indices into
    them, made once per layout and device."""
    key = ("columns", str(device))
    if key not in layout._memo:
        cols = sorted({p for tokens in layout.entities for p in tokens})
        where = {p: n for n, p in enumerate(cols)}
        layout._memo[key] = (torch.tensor(cols, dtype=torch.long, device=device),
                             [torch.tensor([where[p] for p in t], dtype=torch.long, device=device)
                              for t in layout.entities])
    return layout._memo[key]


def _mask_rows(mask, rows):
    """A [B or 1, H or 1, L or 1, Lk] mask's rows `rows` (a slice); a mask with one row for all queries as it is."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., rows, :]


def _entity_logits(q_img, k, layout: Layout, mask_img) -> torch.Tensor:
    """[B, H, n, E] fp32: the logits of the given image rows on every entity token, the model's mask added."""
    cols, _ = entity_columns(layout, q_img.device)
    logits = torch.matmul(q_img.float(), k.index_select(2, cols).float().transpose(-1, -2))
    logits.mul_(1.0 / math.sqrt(q_img.shape[-1]))
    if mask_img is not None:
        _add_mask(logits, mask_img.index_select(-1, cols))
    return logits


def _entity_probs(logits, lse, layout: Layout) -> torch.Tensor:
    """[B, K, n]: exp(logits - lse) averaged over each entity's tokens, then the heads."""
    _, idx = entity_columns(layout, logits.device)
    probs = logits.sub_(lse[..., None]).exp_()
    return torch.stack([probs.index_select(-1, i).mean(-1) for i in idx], dim=1).mean(dim=2)


def scores_from_lse(q, k, lse, layout: Layout, mask=None) -> torch.Tensor:
    """entity_scores from the row log-sum-exp a fused attention call returned with its output ([B, H, L] over the
    queries, the call's own normaliser, mask included): only the image rows' logits on the entity tokens are made."""
    img = layout.image
    return _entity_probs(_entity_logits(q[:, :, img], k, layout, _mask_rows(mask, img)), lse[:, :, img], layout)


def entity_scores(q: torch.Tensor, k: torch.Tensor, layout: Layout, mask=None, fused: bool | None = None):
    """mean over heads and each entity's tokens of softmax(q k^T / sqrt(d)) on the image rows: [B, K, N], in a pass
    of its own (where the call's lse is at hand, `scores_from_lse` costs nothing next to the call).

    q, k: [B, H, L, D] after RoPE; mask: the model's attention mask for these rows ([B or 1, H or 1, L, L]) or None.
    fused (None: on every device but the CPU) reads the scores off one fused fp32 attention call per query chunk
    whose values are the entity indicators, so no logits are written to memory; otherwise [B, H, chunk, L] logits
    exist one chunk at a time (faster on a CPU, where the fused kernel's value product costs more than it saves).
    """
    if fused is None:
        fused = q.device.type != "cpu"
    return _fused_scores(q, k, layout, mask) if fused else _chunked_scores(q, k, layout, mask)


def _fused_scores(q, k, layout: Layout, mask):
    b, h, _, d = q.shape
    keys = k.shape[2]  # the queries' length in joint attention; the text's in cross-attention
    n_ent = len(layout.entities)
    width = max(d, n_ent)  # the fused kernels want the values' head size to equal the keys'
    values = entity_indicators(layout, keys, width, q.device).expand(b, h, keys, width)
    kf = k.float()
    out = torch.empty(b, n_ent, layout.n_img, device=q.device)
    for start, end in _chunks(layout.n_img, _rows_per_chunk(h, keys)):
        rows = slice(layout.image.start + start, layout.image.start + end)
        sub = _mask_rows(mask, rows)
        mass = F.scaled_dot_product_attention(q[:, :, rows].float(), kf, values, attn_mask=sub)[..., :n_ent]
        if sub is not None:  # a row with no key left is NaN, as its softmax is (the fused kernels give 0)
            dead = ~sub.any(-1) if sub.dtype == torch.bool else torch.isneginf(sub).all(-1)
            mass = mass.masked_fill(dead[..., None], float("nan"))
        out[:, :, start:end] = mass.mean(dim=1).transpose(1, 2)
    return out


def _chunked_scores(q, k, layout: Layout, mask):
    b, h, length, d = q.shape
    scale = 1.0 / math.sqrt(d)
    cols = [entity_index(layout, e, q.device) for e in range(len(layout.entities))]
    kf = k.float()
    out = torch.empty(b, len(cols), layout.n_img, device=q.device, dtype=torch.float32)
    for start, end in _chunks(layout.n_img, _rows_per_chunk(h, k.shape[2])):
        rows = slice(layout.image.start + start, layout.image.start + end)
        logits = torch.matmul(q[:, :, rows].float() * scale, kf.transpose(-1, -2))
        _add_mask(logits, _mask_rows(mask, rows))
        weights, norm = _softmax_parts_(logits)
        for e, c in enumerate(cols):
            out[:, e, start:end] = (weights[..., c] * norm).mean(dim=(-1, 1))
    return out


@dataclass
class ImageRows:
    """What one fused call over a call's image rows gives in the mask-history window (`image_rows_pass`)."""

    out: torch.Tensor  # [b, H, N, D]: attention of the image rows over every key but the entity tokens
    lse: torch.Tensor  # [b, H, N] fp32: its log-sum-exp
    scores: torch.Tensor  # [b, K, N]: entity_scores of these rows


def image_rows_pass(q, k, v, layout: Layout, mask=None) -> ImageRows:
    """One fused call over the image rows of q ([b, H, L, D]) with the entity tokens masked off: its output and lse
    (the "bulk" the edits merge with) and, with those tokens' logits, the rows' entity scores. mask: the model's
    ([b or 1, H or 1, L, L]) or None."""
    img = layout.image
    cols, _ = entity_columns(layout, q.device)
    mask_img = _mask_rows(mask, img)
    out, lse = _bulk(q[:, :, img], k, v, cols, mask_img, _budget(q))
    logits = _entity_logits(q[:, :, img], k, layout, mask_img)
    total = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
    return ImageRows(out, lse, _entity_probs(logits, total, layout))


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
    if settings.overlap == "exclusive" and masks.shape[1] > 1:  # the highest score among the masks holding it
        best = scores.masked_fill(~masks, float("-inf")).argmax(dim=1, keepdim=True)
        owner = torch.zeros_like(masks).scatter_(1, best, True)
        contested = masks.sum(dim=1, keepdim=True) > 1
        masks = masks & (~contested | owner)
    return masks


# ----------------------------------------------------------------------------------------------------------
# The edited attention


def attention_mask_4d(mask: torch.Tensor | None, batch_index=None) -> torch.Tensor | None:
    """A ComfyUI attention mask ([L, L], [B, L, L] or [B, H, L, L]; bool = may attend, float = added to the
    logits) as [B or 1, H or 1, L, L], its batch rows restricted to `batch_index` when it has more than one."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.shape[-2] == 1:  # one row for every query (Qwen-Image's text padding mask): a view per query
        mask = mask.expand(*mask.shape[:-2], mask.shape[-1], mask.shape[-1])
    return mask[batch_index] if batch_index is not None and mask.shape[0] > 1 else mask


def _sub_mask(mask: torch.Tensor | None, rows: torch.Tensor, keys: torch.Tensor | None):
    """[H or 1, L, L] -> [H or 1, len(rows), len(keys)] (keys None: all)."""
    if mask is None:
        return None
    sub = mask.index_select(-2, rows)
    return sub if keys is None else sub.index_select(-1, keys)


def _batch_of_one(mask):
    return None if mask is None else mask[None]


def _add_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    return logits.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else logits.add_(mask.float())


def _chunks(count: int, step: int):
    return ((start, min(start + step, count)) for start in range(0, count, step))


def _budget(q: torch.Tensor) -> int:
    """Elements of one explicit-column temporary: a quarter of q's, at least 64 Ki, at most CHUNK_ELEMENTS."""
    return max(1, min(CHUNK_ELEMENTS, max(1 << 16, q.numel() // 4)))


def _bulk(q_rows, k, v, cols, mask_rows, budget):
    """kernels.attention of q_rows ([b, H, r, D]) over every key but `cols` (masked off: a broadcast additive mask
    when the model has none, so nothing of size rows x keys exists) and the model's mask rows ([b or 1, H or 1, r, L]
    or None), in row chunks of at most `budget` mask elements."""
    length = k.shape[-2]
    off = torch.zeros(length, dtype=q_rows.dtype, device=q_rows.device).index_fill_(0, cols, float("-inf"))
    if mask_rows is None:
        return kernels.attention(q_rows, k, v, off.view(1, 1, 1, length))
    rows = q_rows.shape[-2]
    per_row = max(1, mask_rows[..., :1, :].numel())
    outs, lses = [], []
    for c0, c1 in _chunks(rows, max(1, budget // per_row)):
        sub = mask_rows if mask_rows.shape[-2] == 1 else mask_rows[..., c0:c1, :]
        if sub.dtype == torch.bool:
            sub = sub & torch.isfinite(off)
        else:
            sub = sub + off.to(sub.dtype)
        o, s = kernels.attention(q_rows[..., c0:c1, :], k, v, sub)
        outs.append(o)
        lses.append(s)
    return (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs, dim=-2), torch.cat(lses, dim=-1))


@dataclass(frozen=True)
class RowGroup:
    """Image rows inside the same entities' masks: they get the same text edits."""

    rows: torch.Tensor  # image row indices (long)
    members: tuple[int, ...]  # the entities whose masks hold these rows
    start: int  # where these rows begin in MaskPlan.order


class MaskPlan:
    """What DeLeaker derives from one sample's masks ([K, N] bool) alone, made once per mask state: the image rows
    ordered by entity membership (rows in no mask first, then one run per group of rows with the same entities),
    each group's text edits after any number of entity pairs, and the image keys its rows' image-image cut may
    reach. Built with one host sync; the per-call work then slices contiguous runs."""

    def __init__(self, masks: torch.Tensor, settings: Settings):
        n_ent = masks.shape[0]
        self.settings = settings
        self.pairs = list(combinations(range(n_ent), 2))
        self.members = [m.nonzero().flatten() for m in masks]  # image rows of each entity's mask
        # membership patterns, sorted (so "in no mask" comes first), and each row's pattern
        patterns, which = torch.unique(masks.t(), dim=0, return_inverse=True)
        self.order = torch.argsort(which, stable=True)
        counts = torch.bincount(which, minlength=patterns.shape[0]).tolist()
        self.groups: list[RowGroup] = []
        start = 0
        for pattern, count in zip(patterns.tolist(), counts, strict=True):
            members = tuple(e for e in range(n_ent) if pattern[e])
            if members:
                self.groups.append(RowGroup(self.order[start:start + count], members, start))
            start += count
        self.n_plain = self.groups[0].start if self.groups else start
        self.nonempty = [m.numel() > 0 for m in self.members]
        self.masks, self.in_mask = masks, masks.float()  # [K, N] bool, and 1.0 inside each mask
        self._query_order, self._text_edits, self._cut_keys = {}, {}, {}

    def cut_pairs(self) -> list[tuple[int, int, int]]:
        """(pair index, i, j) of the entity pairs whose image-image edit can cut anything (both masks non-empty)."""
        if not self.settings.image_image:
            return []
        return [(p, i, j) for p, (i, j) in enumerate(self.pairs) if self.nonempty[i] and self.nonempty[j]]

    def text_edits(self, group: RowGroup | None, pairs: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(entities whose tokens the group's rows may not see, exponent of alpha on each entity's logits) after
        the first `pairs` entity pairs (all by default), in the reference's pair order (None: rows in no mask)."""
        if group is None:
            return (), (0,) * len(self.members)
        key = (group.start, pairs)
        if key not in self._text_edits:
            self._text_edits[key] = self._edits_after(group, pairs)
        return self._text_edits[key]

    def _edits_after(self, group: RowGroup, pairs: int | None):
        st = self.settings
        blocked, powers = set(), [0] * len(self.members)
        for i, j in self.pairs[:pairs]:
            for src, dst in ((i, j), (j, i)):
                if src in group.members:
                    if st.cross_text:
                        blocked.add(dst)
                    if st.self_text and st.alpha != 1.0:
                        powers[src] = powers[src] + 1 if st.alpha_per_pair else 1
        return tuple(sorted(blocked)), tuple(powers)

    def cut_keys(self, g: int) -> tuple[torch.Tensor, dict]:
        """The image keys ([u] long, sorted) the image-image cut may block for group g's rows (the masks of every
        entity its members pair with), and each such entity's mask as indices into them."""
        if g not in self._cut_keys:
            members = self.groups[g].members
            partners = sorted({b if a == s else a for _, a, b in self.cut_pairs() for s in members if s in (a, b)})
            if not partners:
                keys, where = self.order[:0], {}
            else:
                keys = torch.unique(torch.cat([self.members[t] for t in partners]))
                at = torch.full((self.masks.shape[1],), -1, dtype=torch.long, device=keys.device)
                at[keys] = torch.arange(keys.numel(), device=keys.device)
                where = {t: at[self.members[t]] for t in partners}
            self._cut_keys[g] = (keys, where)
        return self._cut_keys[g]

    def query_order(self, image_start: int, length: int) -> tuple[torch.Tensor, int]:
        """The joint sequence's query rows as [every row outside the image (text, references), image rows in plan
        order], and how many of them come before the first edited row."""
        key = (image_start, length)
        if key not in self._query_order:
            dev = self.order.device
            n_img = self.order.numel()
            outside = [torch.arange(image_start, device=dev), torch.arange(image_start + n_img, length, device=dev)]
            perm = torch.cat([*outside, image_start + self.order])
            self._query_order[key] = (perm, length - n_img + self.n_plain)
        return self._query_order[key]


def _nonzero_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of the non-zero entries, without a host sync (NaN when there are too few)."""
    nonzero = x != 0
    count = nonzero.sum()
    mean = x.sum() / count
    var = (((x - mean) * nonzero) ** 2).sum() / (count - 1)
    return mean, var.sqrt()


class _Columns:
    """The explicit key columns of one row group: every entity token, then the image keys its cut may reach."""

    def __init__(self, k, v, cols: torch.Tensor, n_ent: int, where: dict):
        self.cols, self.n_ent, self.where = cols, n_ent, where
        self.k = k.index_select(1, cols).float().transpose(-1, -2)  # [H, D, C]
        self.v = v.index_select(1, cols).float()  # [H, C, D]


class _Rows:
    """A chunk of one group's image rows: their queries, the bulk (attention over every key but the explicit
    columns, or, `incl` rows, every key but the entity tokens, cut keys then removed by signed weights), the cut
    so far ([r, u] bool) and the explicit logits when they are kept between passes."""

    def __init__(self, group, columns: _Columns, pos, q, out, lse, incl):
        self.group, self.columns, self.pos, self.q = group, columns, pos, q
        self.out, self.lse = out, lse  # [H, r, D] (q's dtype), [H, r] fp32
        self.incl = incl  # [r] bool or None (no row's bulk holds the cut keys)
        r, u = pos.numel(), columns.cols.numel() - columns.n_ent
        self.cut = torch.zeros(r, u, dtype=torch.bool, device=pos.device)
        self.kept = None


class _Edit:
    """One sample's edit: the pieces every chunk shares."""

    def __init__(self, q, k, v, plan: MaskPlan, layout: Layout, settings: Settings, mask):
        self.q, self.k, self.v, self.plan, self.layout, self.settings, self.mask = q, k, v, plan, layout, settings, mask
        self.scale = 1.0 / math.sqrt(q.shape[-1])
        self.budget = _budget(q)
        self.kept_budget = self.budget  # explicit logits kept between passes, in all
        self.guard = GUARD.get(q.dtype, GUARD_LOW_PRECISION)
        self.ent_cols, self.ent_idx = entity_columns(layout, q.device)

    def logits(self, ch: _Rows) -> torch.Tensor:
        """[H, r, C] fp32 raw logits of the chunk's rows on its explicit columns (no edit, no mask): a fresh tensor."""
        if ch.kept is not None:
            return ch.kept.clone()
        s = torch.matmul(ch.q.float(), ch.columns.k).mul_(self.scale)
        if self.kept_budget >= s.numel():
            self.kept_budget -= s.numel()
            ch.kept = s.clone()
        return s

    def weights(self, ch: _Rows, blocked, powers):
        """Every term of the chunk's rows' softmax as exp(. - m), after these text edits and the chunk's cut:
        (w [H, r, C]: the explicit columns' exp, unsigned; sign [r, u] or None: what each cut-key column adds to
        the normaliser (1 kept, 0 cut; `incl` rows: -1 cut, 0 kept, their keys being in the bulk already); the
        bulk's weight [H, r]; the normaliser [H, r])."""
        s = self.logits(ch)
        n_ent, alpha = ch.columns.n_ent, self.settings.alpha
        ent = s[..., :n_ent]
        for e, power in enumerate(powers):
            if power and e not in blocked:
                idx = self.ent_idx[e]
                ent[..., idx] = ent[..., idx] * alpha ** power
        for e in blocked:
            ent[..., self.ent_idx[e]] = float("-inf")
        if self.mask is not None:
            _add_mask(s, _sub_mask(self.mask, ch.pos, ch.columns.cols))
        top = torch.maximum(s.amax(dim=-1), ch.lse)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = s.sub_(top[..., None]).exp_()
        base = (ch.lse - top).exp()
        total = base + w[..., :n_ent].sum(dim=-1)
        sign = None
        if ch.cut.shape[1]:
            cut = ch.cut.to(w.dtype)
            sign = 1.0 - cut if ch.incl is None else torch.where(ch.incl[:, None], -cut, 1.0 - cut)
            total += (w[..., n_ent:] * sign).sum(dim=-1)
        return w, sign, base, total

    def guard_rows(self, ch: _Rows, base, total) -> bool:
        """Recomputes, without the cut keys, the bulk of `incl` rows whose normaliser kept less than `guard` of their
        bulk's mass in some head (what a subtraction could lose precision on); True when any was."""
        if ch.incl is None or not bool(ch.cut.any()):
            return False
        bad = ch.incl & (total < self.guard * base).any(dim=0)
        if not bool(bad.any()):
            return False
        rows = bad.nonzero().flatten()
        pos = ch.pos.index_select(0, rows)
        mask_rows = None if self.mask is None else _sub_mask(self.mask, pos, None)[None]
        out, lse = _bulk(ch.q.index_select(1, rows)[None], self.k[None], self.v[None], ch.columns.cols, mask_rows,
                         self.budget)
        ch.out = ch.out.index_copy(1, rows, out[0].to(ch.out.dtype))
        ch.lse = ch.lse.index_copy(1, rows, lse[0])
        ch.incl = ch.incl & ~bad
        return True

    def settled_weights(self, ch: _Rows, blocked, powers):
        w, sign, base, total = self.weights(ch, blocked, powers)
        if self.guard_rows(ch, base, total):
            w, sign, base, total = self.weights(ch, blocked, powers)
        return w, sign, base, total

    def image_probs(self, ch: _Rows, pair: int) -> torch.Tensor:
        """[r, u]: the head-mean probability of the chunk's rows on its cut keys, with the edits of the pairs before
        `pair` (0 where cut)."""
        w, _, _, total = self.settled_weights(ch, *self.plan.text_edits(ch.group, pair))
        safe = torch.where(total > 0, total, torch.ones_like(total))
        p = w[..., ch.columns.n_ent:].div_(safe[..., None])
        return p.mean(dim=0).masked_fill_(ch.cut, 0.0)

    def output(self, ch: _Rows) -> torch.Tensor:
        """[H, r, D] fp32: the chunk's rows with every edit."""
        w, sign, base, total = self.settled_weights(ch, *self.plan.text_edits(ch.group))
        if sign is not None:
            w[..., ch.columns.n_ent:] *= sign
        out = torch.baddbmm(ch.out.float() * base[..., None], w, ch.columns.v)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        out.div_(safe[..., None])
        return out if bool((total > 0).all()) else out.masked_fill_((total <= 0)[..., None], 0.0)

    def chunks(self, group, rows: torch.Tensor, columns: _Columns, bulk) -> list[_Rows]:
        """The chunks of `rows` (image row indices) of one group: their bulk from one fused call (or from `bulk`, the
        image rows' pass), sliced so each chunk's explicit logits stay under the budget."""
        img0 = self.layout.image.start
        pos = img0 + rows
        q_rows = self.q.index_select(1, pos)
        if bulk is None:
            mask_rows = None if self.mask is None else _sub_mask(self.mask, pos, None)[None]
            out, lse = _bulk(q_rows[None], self.k[None], self.v[None], columns.cols, mask_rows, self.budget)
            out, lse, incl = out[0], lse[0], None
        else:
            out, lse = bulk[0].index_select(1, rows), bulk[1].index_select(1, rows)
            incl = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)
        step = max(1, self.budget // (q_rows.shape[0] * columns.cols.numel()))
        return [_Rows(group, columns, pos[c0:c1], q_rows[:, c0:c1], out[:, c0:c1], lse[:, c0:c1],
                      None if incl is None else incl[c0:c1]) for c0, c1 in _chunks(rows.numel(), step)]


def _prepared(q, k, v, plan: MaskPlan, layout: Layout, settings: Settings, mask, bulk):
    """The chunks of one sample's edited image rows (and, with `bulk`, of its rows in no mask) with their bulk and,
    pair by pair in the reference's order, their image-image cut."""
    ed = _Edit(q, k, v, plan, layout, settings, mask)
    entity_only = _Columns(k, v, ed.ent_cols, ed.ent_cols.numel(), {})
    chunks = []
    if bulk is not None and plan.n_plain:  # image rows in no mask: their bulk and the unedited entity tokens
        chunks += ed.chunks(None, plan.order[:plan.n_plain], entity_only, bulk)
    for g, group in enumerate(plan.groups):
        keys, where = plan.cut_keys(g)
        columns = entity_only if not keys.numel() else \
            _Columns(k, v, torch.cat([ed.ent_cols, layout.image.start + keys]), ed.ent_cols.numel(), where)
        chunks += ed.chunks(group, group.rows, columns, bulk)
    for p, i, j in plan.cut_pairs():
        probs = {id(ch): ed.image_probs(ch, p) for ch in chunks
                 if ch.group is not None and (i in ch.group.members or j in ch.group.members)}
        cuts = []
        for s, t in ((i, j), (j, i)):  # both directions from the probabilities before this pair's cut
            parts = [(ch, probs[id(ch)][:, ch.columns.where[t]]) for ch in chunks
                     if ch.group is not None and s in ch.group.members]
            mean, std = _nonzero_mean_std(torch.cat([part.flatten() for _, part in parts]))
            cuts += [(ch, t, part > mean + settings.beta_image * std) for ch, part in parts]
        for ch, t, new in cuts:
            idx = ch.columns.where[t]
            ch.cut[:, idx] = ch.cut[:, idx] | new
    return ed, chunks


def image_image_cuts(q, k, v, plan: MaskPlan, layout: Layout, settings: Settings, mask=None) -> torch.Tensor:
    """[N, N] bool: the image keys the image-image edit blocks for each image row of one sample (q, k, v:
    [H, L, D]; mask: its [H or 1, L, L] or None), as deleaker_attention finds them (for tests and benchmarks)."""
    _, chunks = _prepared(q, k, v, plan, layout, settings, mask, None)
    cut = torch.zeros(layout.n_img, layout.n_img, dtype=torch.bool, device=q.device)
    for ch in chunks:
        if ch.cut.shape[1]:
            keys = ch.columns.cols[ch.columns.n_ent:] - layout.image.start
            rows = ch.pos - layout.image.start
            cut[rows[:, None], keys[None, :]] = ch.cut
    return cut


def _edited_sample(q, k, v, attend, plan: MaskPlan, layout: Layout, settings: Settings, mask, bulk=None):
    """[L, H*D] attention of one sample (q, k, v: [H, L, D]; mask: its [H or 1, L, L] or None) with the edits in
    its image-query rows. bulk: (out [H, N, D], lse [H, N]) of its image rows over every key but the entity tokens
    (the mask-history window's image_rows_pass), or None: each group then makes its own, without its explicit
    columns."""
    heads, length, d = q.shape
    out = torch.empty(length, heads, d, dtype=q.dtype, device=q.device)
    perm, n_plain = plan.query_order(layout.image.start, length)
    alone = perm[:length - layout.n_img] if bulk is not None else perm[:n_plain]
    if alone.numel():  # rows DeLeaker leaves alone: the model's own attention
        res = attend(q.index_select(1, alone)[None], k[None], v[None], _batch_of_one(_sub_mask(mask, alone, None)))
        out.view(length, heads * d).index_copy_(0, alone, res[0].to(q.dtype))
    ed, chunks = _prepared(q, k, v, plan, layout, settings, mask, bulk)
    for ch in chunks:
        out.index_copy_(0, ch.pos, ed.output(ch).transpose(0, 1).to(q.dtype))
    return out.view(length, heads * d)


def deleaker_attention(q, k, v, attend, plans: list[MaskPlan], layout: Layout, settings: Settings, batch_rows,
                       mask=None, image_rows: ImageRows | None = None) -> torch.Tensor:
    """Attention output [B, L, H*D] with DeLeaker's edits in the image-query rows of `batch_rows`.

    q, k, v: [B, H, L, D]; plans: one MaskPlan per batch row in `batch_rows`; mask: the model's attention mask, if
    any; image_rows: image_rows_pass of the `batch_rows` in this call (the mask-history window), if made.
    ``attend(q, k, v, mask)`` is the model's own attention (whatever backend or chained override it uses) on
    [b, H, *, D] tensors, returning [b, rows, H*D]: it runs every row DeLeaker leaves alone. The edited rows run
    kernels.attention over the keys they keep as they are, merged with their edited columns."""
    edited = {}
    given, mask = mask, attention_mask_4d(mask)
    if settings.edits_anything and len(layout.entities) >= 2:
        for m, (plan, b) in enumerate(zip(plans, batch_rows, strict=True)):
            if plan.groups:
                sample_mask = None if mask is None else mask[b if mask.shape[0] > 1 else 0]
                bulk = None if image_rows is None else (image_rows.out[m], image_rows.lse[m])
                edited[b] = _edited_sample(q[b], k[b], v[b], attend, plan, layout, settings, sample_mask, bulk)
    if not edited:
        return attend(q, k, v, given)
    plain = [b for b in range(q.shape[0]) if b not in edited]
    parts = dict(edited)
    if plain:
        out = attend(q[plain], k[plain], v[plain], attention_mask_4d(mask, plain))
        parts.update(zip(plain, out, strict=True))
    dtype = next(iter(parts.values())).dtype
    return torch.stack([parts[b].to(dtype) for b in range(q.shape[0])])
