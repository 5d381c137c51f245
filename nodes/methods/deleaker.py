"""DeLeaker (Ventura, Toker et al., 2025) for joint text-image attention: the algorithm, memory-bounded, at about
the cost of the model's own attention call.

Pure PyTorch; the ComfyUI glue is ``deleaker_nodes.py``. The reference implementation materialises the full
B x H x L x L logits and a same-sized history in every layer; here nothing of that size exists. Everything rests
on the row log-sum-exp (lse) that fused attention kernels return with their output (kernels.py):

- entity scores (image query -> entity text tokens, averaged over the entity's tokens and the heads) are
  exp(q.k_entity * scale - lse) on the entity columns only (`scores_from_lse`); where no lse comes with the call
  (the model's attention is another kernel), one more fused call over the image rows gives it (`entity_scores`);
- the mask history is the running mean of those scores ([B, K, N]), which equals the reference's running mean of
  the full probabilities read at the same columns (the mean is linear);
- the edits touch a few key columns per image row: the entity tokens (blocked for the other entities' rows, x alpha
  for the entity's own) and, for the image-image cut, the image keys of the masks the row's entities pair with.
  The rows in some mask are grouped once per mask state (a MaskPlan) into row sets by those keys, with per-row
  tables of the text edits. Where the driver found the fused kernel to be the model's own attention, the whole
  call's fused output and lse (`whole`) give every row DeLeaker leaves alone as it is, and each edited row takes
  its explicit columns' original weights out and puts the edited ones in (signed weights, merged by the lse); a
  row whose normaliser would keep less than GUARD of its mass that way is recomputed without those columns, so no
  cancellation costs precision. Elsewhere the rows left alone run the model's attention (`attend`: whatever
  backend or chained override it uses) and the edited rows one fused call over every key but their explicit
  columns (a broadcast mask, no key copy), merged with those columns by log-sum-exp;
- the image-image statistics need the probabilities only on the M_i x M_j blocks: those explicit logits and each
  row's edited normaliser, pair by pair in the reference's order; the cut reuses the same weights.
Softmax, merges and statistics run in fp32. A mask the model itself passes to attention is kept everywhere (added
after the edits). Per-chunk temporaries of the explicit columns stay under half of q's size (and CHUNK_ELEMENTS);
the explicit weights kept between passes under q's size.

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

from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

from ..registry.layout import Layout
from . import kernels
from .settings import Setting

CHUNK_ELEMENTS = kernels.CHUNK_ELEMENTS  # fp32 logits per chunk (128 MiB): bounds every temporary here
GUARD = {torch.float32: 0.25, torch.float64: 0.25}  # a row's edited normaliser must keep this share of its bulk
GUARD_LOW_PRECISION = 0.5  # the same for 16-bit inputs (a rounded bulk output is amplified by at most 1 / GUARD)


MASK_THRESHOLD = Setting("mask_threshold", "float", 1.0, (
    "beta1: an image token belongs to an entity when its attention to the entity's words is above mean + beta1 x "
    "std. Default {default} (paper); raise for tighter masks."), -3.0, 5.0, 0.05)
IMAGE_THRESHOLD = Setting("image_threshold", "float", 1.0, (
    "beta2: image-to-image attention between two entities' regions is cut above mean + beta2 x std. Default "
    "{default} (paper); raise to cut less."), -3.0, 5.0, 0.05)
ALPHA = Setting("alpha", "float", 1.2, (
    "Self-identity reinforcement: logits from an entity's region to its own words are multiplied by this. Default "
    "{default} (paper); 1.0 turns it off."), 1.0, 3.0, 0.05)
MASK_HISTORY = Setting("mask_history", "float", 0.6, (
    "Masks come from the attention averaged over this first fraction of the steps (paper: 12 of 20 = {default}), "
    "then stay fixed."), 0.0, 1.0, 0.05)
CROSS_TEXT = Setting("cross_text", "bool", True, "Block image-to-text attention between entities (the main edit). "
                     "On by default; off only for ablations.")
SELF_TEXT = Setting("self_text", "bool", True, "Reinforce each entity region's attention to its own words by alpha. "
                    "On by default.")
IMAGE_IMAGE = Setting("image_image", "bool", True, (
    "Cut strong image-to-image attention between entities' regions. On by default; it is the costliest edit and "
    "contributes least in the paper's ablation: turn it off for speed."))
ALPHA_PER_PAIR = Setting("alpha_per_pair", "bool", False, (
    "Off (default): alpha once per entity. On: the paper's code, which applies alpha once per entity pair (alpha^2 "
    "for three entities)."))
OVERLAP = Setting("overlap", "choice", "reference", (
    "Image tokens in two entities' masks: 'reference' (default) blocks both entities' words there (the paper's "
    "code); 'exclusive' gives them to the entity they attend to most."), options=("reference", "exclusive"))
SETTINGS = (MASK_THRESHOLD, IMAGE_THRESHOLD, ALPHA, MASK_HISTORY, CROSS_TEXT, SELF_TEXT, IMAGE_IMAGE, ALPHA_PER_PAIR,
            OVERLAP)  # the node's inputs, in order


@dataclass(frozen=True)
class Settings:
    beta_text: float = MASK_THRESHOLD.default  # mask threshold: mean + beta_text * std
    beta_image: float = IMAGE_THRESHOLD.default  # image-image threshold: mean + beta_image * std
    alpha: float = ALPHA.default  # self-identity reinforcement of image->own-text logits
    cross_text: bool = CROSS_TEXT.default  # block image(M_i) -> text(T_j)
    self_text: bool = SELF_TEXT.default  # multiply image(M_i) -> text(T_i) logits by alpha
    image_image: bool = IMAGE_IMAGE.default  # block strong image(M_i) -> image(M_j) attention
    alpha_per_pair: bool = ALPHA_PER_PAIR.default  # reference: alpha once per entity pair (alpha^(K-1))
    overlap: str = OVERLAP.default  # "reference" (block both) | "exclusive" (higher score wins)
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


def batch_rows(t: torch.Tensor | None, rows: list[int]):
    """t's batch rows `rows`: t itself when they are all of them, a view when they are a run, else a copy."""
    if t is None or rows == list(range(t.shape[0])):
        return t
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return t[rows[0]:rows[0] + len(rows)]
    return t[rows]


def _entity_logits(q_img, k, layout: Layout, mask_img) -> torch.Tensor:
    """[B, H, n, E] fp32: the logits of the given image rows on every entity token, the model's mask added."""
    cols, _ = entity_columns(layout, q_img.device)
    logits = torch.matmul(q_img.float(), k.index_select(2, cols).float().transpose(-1, -2))
    logits.mul_(kernels.scale_of(q_img))
    if mask_img is not None:
        kernels.add_mask_(logits, mask_img.index_select(-1, cols))
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
    return _entity_probs(_entity_logits(q[:, :, img], k, layout, kernels.rows_of(mask, img)), lse[:, :, img], layout)


def entity_scores(q: torch.Tensor, k: torch.Tensor, layout: Layout, mask=None, fused: bool | None = None, v=None):
    """mean over heads and each entity's tokens of softmax(q k^T / sqrt(d)) on the image rows: [B, K, N], in a pass
    of its own (where the call's lse is at hand, `scores_from_lse` costs nothing next to the call).

    q, k: [B, H, L, D] after RoPE; mask: the model's attention mask for these rows ([B or 1, H or 1, L, L]) or None.
    With the call's values `v`, one kernels.attention call over the image rows gives their lse (a fused kernel's
    blocks: no logits in memory). Without: fused (None: on every device but the CPU) reads the scores off one fused
    fp32 attention call per query chunk whose values are the entity indicators; otherwise [B, H, chunk, L] logits
    exist one chunk at a time.
    """
    if v is not None:
        img = layout.image
        mask_img = kernels.rows_of(mask, img)
        lse = kernels.attention(q[:, :, img], k, v, mask_img)[1]
        return _entity_probs(_entity_logits(q[:, :, img], k, layout, mask_img), lse, layout)
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
        sub = kernels.rows_of(mask, rows)
        mass = F.scaled_dot_product_attention(q[:, :, rows].float(), kf, values, attn_mask=sub)[..., :n_ent]
        if sub is not None:  # a row with no key left is NaN, as its softmax is (the fused kernels give 0)
            dead = ~sub.any(-1) if sub.dtype == torch.bool else torch.isneginf(sub).all(-1)
            mass = mass.masked_fill(dead[..., None], float("nan"))
        out[:, :, start:end] = mass.mean(dim=1).transpose(1, 2)
    return out


def _chunked_scores(q, k, layout: Layout, mask):
    b, h, length, d = q.shape
    scale = kernels.scale_of(q)
    cols = [entity_index(layout, e, q.device) for e in range(len(layout.entities))]
    kf = k.float()
    out = torch.empty(b, len(cols), layout.n_img, device=q.device, dtype=torch.float32)
    for start, end in _chunks(layout.n_img, _rows_per_chunk(h, k.shape[2])):
        rows = slice(layout.image.start + start, layout.image.start + end)
        logits = torch.matmul(q[:, :, rows].float() * scale, kf.transpose(-1, -2))
        kernels.add_mask_(logits, kernels.rows_of(mask, rows))
        weights, norm = _softmax_parts_(logits)
        for e, c in enumerate(cols):
            out[:, e, start:end] = (weights[..., c] * norm).mean(dim=(-1, 1))
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


def _chunks(count: int, step: int):
    return ((start, min(start + step, count)) for start in range(0, count, step))


def _budget(q: torch.Tensor) -> int:
    """Elements of one explicit-column temporary: half of q's, at least 256 Ki, at most CHUNK_ELEMENTS."""
    return max(1, min(CHUNK_ELEMENTS, max(1 << 18, q.numel() // 2)))


def _off_columns(length: int, cols: torch.Tensor, dtype, device) -> torch.Tensor:
    """[length] additive: -inf on `cols`, 0 elsewhere."""
    return torch.zeros(length, dtype=dtype, device=device).index_fill_(0, cols, float("-inf"))


def _bulk(q_rows, k, v, cols, mask_rows, budget):
    """kernels.attention of q_rows ([b, H, r, D]) over every key but `cols` (masked off: a broadcast additive mask
    when the model has none, so nothing of size rows x keys exists) and the model's mask rows ([b or 1, H or 1, r, L]
    or None), in row chunks of at most `budget` mask elements."""
    length = k.shape[-2]
    off = _off_columns(length, cols, q_rows.dtype, q_rows.device)
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
        self.masks = masks  # [K, N] bool
        self._query_order, self._text_edits, self._cache = {}, {}, {}

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

    def row_sets(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The image rows in some mask, by the image keys their image-image cut may reach (the masks of every entity
        their groups' members pair with: one set per such choice, at most K + 1): (rows [R] long, in plan order;
        each row's group index [R] long; those keys [u] long, sorted)."""
        if "row sets" not in self._cache:
            dev = self.order.device
            by_partners: dict[tuple, list[int]] = {}
            for g, group in enumerate(self.groups):
                partners = tuple(sorted({b if a == s else a for _, a, b in self.cut_pairs() for s in group.members
                                         if s in (a, b)}))
                by_partners.setdefault(partners, []).append(g)
            sets = []
            for partners, groups in by_partners.items():
                rows = torch.cat([self.groups[g].rows for g in groups])
                gid = torch.cat([torch.full((self.groups[g].rows.numel(),), g, device=dev) for g in groups])
                keys = torch.unique(torch.cat([self.members[t] for t in partners])) if partners else self.order[:0]
                sets.append((rows, gid, keys))
            self._cache["row sets"] = sets
        return self._cache["row sets"]

    def inside(self, n: int, s: int, t: int) -> torch.Tensor | None:
        """[R, u] bool: which of row set n's rows are in M_s and its cut keys in M_t (None: no row is)."""
        key = ("inside", n, s, t)
        if key not in self._cache:
            rows, _, keys = self.row_sets()[n]
            rows_in = self.masks[s].index_select(0, rows)
            self._cache[key] = rows_in[:, None] & self.masks[t].index_select(0, keys)[None, :] \
                if bool(rows_in.any()) else None
        return self._cache[key]

    def entity_edits(self, pairs: int | None, ent_idx, n_cols: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each group's text edits after the first `pairs` entity pairs, on the entity-token columns: (logit
        multipliers [G, n_cols] fp32, blocked [G, n_cols] bool); None when there are none."""
        key = ("edits", pairs, n_cols)
        if key not in self._cache:
            dev = self.order.device
            mult = torch.ones(len(self.groups), n_cols, device=dev)
            blocked = torch.zeros(len(self.groups), n_cols, dtype=torch.bool, device=dev)
            any_edit = False
            for g, group in enumerate(self.groups):
                gone, powers = self.text_edits(group, pairs)
                for e, power in enumerate(powers):
                    if power and e not in gone:  # a token of two entities: both multipliers, as the reference's
                        mult[g].index_put_((ent_idx[e],), mult[g][ent_idx[e]] * self.settings.alpha ** power)
                        any_edit = True
                for e in gone:
                    blocked[g, ent_idx[e]] = True
                    any_edit = True
            self._cache[key] = (mult, blocked) if any_edit else None
        return self._cache[key]

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


class _RowSet:
    """Image rows that share their explicit key columns (every entity token, then the image keys a cut may reach):
    each row's group, the cut so far ([R, u] bool) and the bulk: an attention output and its lse over either every
    key (`incl` rows: the whole call's, the explicit columns' original weights then taken out and their edited ones
    put in, by signed weights) or every key but the explicit columns. The rows' queries, the bulk's rows of the
    whole call and the cut keys' values are gathered a chunk or a set at a time, when needed."""

    def __init__(self, ed, rows: torch.Tensor, gid: torch.Tensor, cut_keys: torch.Tensor):
        k, v, layout = ed.k, ed.v, ed.layout
        self.ed, self.rows, self.gid, self.keys = ed, rows, gid, cut_keys
        self.pos = layout.image.start + rows
        self.cols = torch.cat([ed.ent_cols, layout.image.start + cut_keys])
        self.n_ent = ed.ent_cols.numel()
        self.k_ent = (k.index_select(1, ed.ent_cols).float() * ed.scale).transpose(1, 2)  # [H, D, E], scaled
        self.v_ent = v.index_select(1, ed.ent_cols).float()  # [H, E, D]
        self._k_cut = self._v_cut = None
        self.cut = torch.zeros(rows.numel(), cut_keys.numel(), dtype=torch.bool, device=rows.device)
        self.sign = None  # [R, u] fp32 once anything is cut or any row is recomputed (update_sign)
        self.out = self.lse = self.incl = None  # bulk: [H, R, D] (None: the whole call's rows), [H, R] fp32; [R] bool
        self.whole = None  # the whole call's output [L, H*D], where the bulk is its rows
        self.kept = {}

    def q_rows(self, c0, c1) -> torch.Tensor:
        return self.ed.q.index_select(1, self.pos[c0:c1])

    @property
    def k_cut(self) -> torch.Tensor:
        """[H, D, u] fp32, scaled: the cut keys, gathered when first needed (dropped once every chunk's weights are
        kept)."""
        if self._k_cut is None:
            self._k_cut = (self.ed.k.index_select(1, self.cols[self.n_ent:]).float() * self.ed.scale
                           ).transpose(1, 2).contiguous()
        return self._k_cut

    @property
    def v_cut(self) -> torch.Tensor:
        """[H, u, D] fp32: the cut keys' values, gathered while the set's output is made."""
        if self._v_cut is None:
            self._v_cut = self.ed.v.index_select(1, self.cols[self.n_ent:]).float()
        return self._v_cut

    def bulk(self, c0, c1) -> torch.Tensor:
        """[H, r, D]: the bulk of rows c0..c1 (a copy of the whole call's rows, or a view of the set's own)."""
        if self.out is not None:
            return self.out[:, c0:c1]
        heads, d = self.ed.q.shape[0], self.ed.q.shape[-1]
        return self.whole.index_select(0, self.pos[c0:c1]).view(-1, heads, d).transpose(0, 1)

    def update_sign(self) -> None:
        """What each cut-key column adds to its row's normaliser, times its weight: 1 kept, 0 cut; `incl` rows:
        -1 cut, 0 kept (their keys are in the bulk already)."""
        cut = self.cut.float()
        self.sign = 1.0 - cut if self.incl is None else torch.where(self.incl[:, None], -cut, 1.0 - cut)


class _Edit:
    """One sample's edit (q, k, v: [H, L, D]; mask: its [H or 1, L, L] or None), its row sets in chunks of at most
    `budget` explicit logits."""

    def __init__(self, q, k, v, plan: MaskPlan, layout: Layout, settings: Settings, mask):
        self.q, self.k, self.v, self.plan, self.layout, self.settings, self.mask = q, k, v, plan, layout, settings, mask
        self.scale = kernels.scale_of(q)
        self.budget = _budget(q)
        self.kept_budget = 2 * self.budget  # cut-key weights kept between passes, in all (q's size)
        self.guard = GUARD.get(q.dtype, GUARD_LOW_PRECISION)
        self.ent_cols, self.ent_idx = entity_columns(layout, q.device)

    def row_set(self, rows, gid, cut_keys, whole) -> _RowSet:
        rs = _RowSet(self, rows, gid, cut_keys)
        if whole is None:  # one fused call over every key but the explicit columns
            mask_rows = None if self.mask is None else _sub_mask(self.mask, rs.pos, None)[None]
            out, lse = _bulk(self.q.index_select(1, rs.pos)[None], self.k[None], self.v[None], rs.cols, mask_rows,
                             self.budget)
            rs.out, rs.lse = out[0], lse[0]
        else:  # the whole call's output and lse: every key
            rs.whole, rs.lse = whole[0], whole[1].index_select(1, rs.pos)
            rs.incl = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)
        return rs

    def chunks(self, rs: _RowSet):
        step = max(1, self.budget // (self.q.shape[0] * rs.cols.numel()))
        return [(rs, c0, c1) for c0, c1 in _chunks(rs.rows.numel(), step)]

    def explicit(self, chunk):
        """(ent [H, r, E]: the raw logits on the entity tokens, no edit, no mask; u0 [H, r, u]: the cut keys' weights
        exp(logit + mask - m0); m0 [H, r]: the bulk's lse where every row's bulk holds those keys, else the larger of
        it and their largest logit), kept between passes while they fit the budget: not to be written to."""
        rs, c0, c1 = chunk
        if c0 in rs.kept:
            return rs.kept[c0]
        q = rs.q_rows(c0, c1).float()
        ent = torch.matmul(q, rs.k_ent)
        cut = torch.matmul(q, rs.k_cut)
        if self.mask is not None and cut.shape[-1]:
            kernels.add_mask_(cut, _sub_mask(self.mask, rs.pos[c0:c1], rs.cols[rs.n_ent:]))
        m0 = rs.lse[:, c0:c1]
        if cut.shape[-1] and (rs.incl is None or not bool(rs.incl[c0:c1].all())):
            m0 = torch.maximum(m0, cut.amax(dim=-1))
        m0 = m0.nan_to_num(neginf=0.0)  # a row with no key: 0
        found = (ent, cut.sub_(m0[..., None]).exp_(), m0)
        if self.kept_budget >= cut.numel():
            self.kept_budget -= cut.numel()
            rs.kept[c0] = found
            if len(rs.kept) == len(self.chunks(rs)):
                rs._k_cut = None  # every chunk's weights are kept
        return found

    def weights(self, chunk, pairs: int | None):
        """The chunk's rows' softmax terms as exp(. - m), with the text edits after `pairs` entity pairs and the cut
        so far: (ent [H, r, E]: what each entity token adds to the normaliser, times its value: its edited weight,
        minus (`incl` rows) its original one; u0 [H, r, u] (explicit()); f [H, r]: the cut keys' weights are u0 * f;
        u_sum [H, r]: sum of u0 * sign (update_sign) or None; the bulk's weight [H, r]; the normaliser [H, r])."""
        rs, c0, c1 = chunk
        raw, u0, m0 = self.explicit(chunk)
        n_ent = rs.n_ent
        ent = raw.clone()
        edits = self.plan.entity_edits(pairs, self.ent_idx, n_ent)
        if edits is not None:
            gid = rs.gid[c0:c1]
            ent.mul_(edits[0].index_select(0, gid)).masked_fill_(edits[1].index_select(0, gid), float("-inf"))
        incl = None if rs.incl is None else rs.incl[c0:c1]
        if self.mask is not None:
            bias = _sub_mask(self.mask, rs.pos[c0:c1], rs.cols[:n_ent])
            kernels.add_mask_(ent, bias)
            if incl is not None:
                raw = kernels.add_mask_(raw.clone(), bias)
        top = torch.maximum(ent.amax(dim=-1), m0)
        ent = ent.sub_(top[..., None]).exp_()
        if incl is not None:  # their bulk holds the original entity tokens: take them out
            ent -= torch.sub(raw, top[..., None]).exp_().mul_(incl[:, None])
        f = (m0 - top).exp()
        base = (rs.lse[:, c0:c1] - top).exp()
        total = base + ent.sum(dim=-1)
        u_sum = None
        if rs.sign is not None:
            u_sum = (u0 * rs.sign[c0:c1]).sum(dim=-1)
        elif rs.incl is None and u0.shape[-1]:
            u_sum = u0.sum(dim=-1)
        if u_sum is not None:
            total += f * u_sum
        return ent, u0, f, u_sum, base, total

    def guard_rows(self, chunk, base, total) -> bool:
        """Recomputes, without the explicit columns, the bulk of `incl` rows whose normaliser kept less than `guard`
        of their bulk's mass in some head (what a subtraction could lose precision on); True when any was."""
        rs, c0, c1 = chunk
        if rs.incl is None:
            return False
        bad = rs.incl[c0:c1] & (total < self.guard * base).any(dim=0)
        if not bool(bad.any()):
            return False
        rows = c0 + bad.nonzero().flatten()
        pos = rs.pos.index_select(0, rows)
        mask_rows = None if self.mask is None else _sub_mask(self.mask, pos, None)[None]
        out, lse = _bulk(self.q.index_select(1, pos)[None], self.k[None], self.v[None], rs.cols, mask_rows,
                         self.budget)
        if rs.out is None:  # the bulk so far: the whole call's rows
            rs.out = rs.bulk(0, rs.rows.numel()).contiguous()
        rs.out.index_copy_(1, rows, out[0].to(rs.out.dtype))
        rs.lse.index_copy_(1, rows, lse[0])
        rs.incl.index_fill_(0, rows, False)
        rs.update_sign()
        self.kept_budget += rs.kept.pop(c0, (None, torch.empty(0), None))[1].numel()  # m0 changes with the bulk
        return True

    def settled_weights(self, chunk, pairs: int | None):
        weights = self.weights(chunk, pairs)
        if self.guard_rows(chunk, *weights[4:]):
            weights = self.weights(chunk, pairs)
        return weights

    def image_probs(self, chunk, pair: int) -> torch.Tensor:
        """[r, u]: the head-mean probability of a chunk's rows on its cut keys, with the edits of the pairs before
        `pair` (0 where cut)."""
        rs, c0, c1 = chunk
        _, u0, f, _, _, total = self.settled_weights(chunk, pair)
        scale = f / torch.where(total > 0, total, torch.ones_like(total))
        return (u0 * scale[..., None]).mean(dim=0).masked_fill_(rs.cut[c0:c1], 0.0)

    def output(self, chunk) -> torch.Tensor:
        """[H, r, D] fp32: a chunk's rows with every edit (in the bulk's buffer where that is fp32)."""
        rs, c0, c1 = chunk
        ent, u0, f, u_sum, base, total = self.settled_weights(chunk, None)
        bulk = rs.bulk(c0, c1)
        out = bulk.mul_(base[..., None]) if bulk.dtype == torch.float32 else bulk.float() * base[..., None]
        out.baddbmm_(ent, rs.v_ent)  # the bulk's own buffer (a copy of the whole call's rows): its last use
        if u_sum is not None:
            signed = u0 if rs.sign is None else u0 * rs.sign[c0:c1]
            out.add_(torch.bmm(signed, rs.v_cut).mul_(f[..., None]))
        return out.mul_(torch.where(total > 0, total, torch.ones_like(total)).reciprocal_()[..., None])


def _cut(ed: _Edit, sets: list[_RowSet]) -> None:
    """The image-image edit, pair by pair in the reference's order: for rows of M_s and keys of M_t, the head-mean
    probability (with the earlier pairs' edits) above mean + beta2 * std of the block's non-zero values is cut
    (inside M_s x M_t only: see the module's description)."""
    plan, settings = ed.plan, ed.settings
    cutting = [(n, rs) for n, rs in enumerate(sets) if rs.keys.numel()]
    for p, i, j in plan.cut_pairs():
        chunks = [(n, c) for n, rs in cutting for c in ed.chunks(rs)]
        probs = [ed.image_probs(c, p) for _, c in chunks]  # both directions from the probabilities before the cut
        cuts = []
        for s, t in ((i, j), (j, i)):
            blocks = []
            for (n, (rs, c0, c1)), prob in zip(chunks, probs, strict=True):
                inside = plan.inside(n, s, t)
                if inside is not None:
                    blocks.append((rs, c0, c1, inside[c0:c1], prob))
            if not blocks:
                continue
            values = torch.cat([prob.masked_select(inside) for _, _, _, inside, prob in blocks])
            values = values.masked_select(values != 0)
            threshold = values.mean() + settings.beta_image * values.std()  # NaN (nothing cut) below 2 values
            cuts += [(rs, c0, c1, prob.gt(threshold).logical_and_(inside)) for rs, c0, c1, inside, prob in blocks]
        for rs, c0, c1, new in cuts:
            rs.cut[c0:c1].logical_or_(new)
        for _, rs in cutting:
            rs.update_sign()


def _prepared(q, k, v, plan: MaskPlan, layout: Layout, settings: Settings, mask, whole):
    """One sample's edit with its row sets (the image rows in some mask) and their cut."""
    ed = _Edit(q, k, v, plan, layout, settings, mask)
    sets = [ed.row_set(rows, gid, keys, whole) for rows, gid, keys in plan.row_sets()]
    _cut(ed, sets)
    return ed, sets


def image_image_cuts(q, k, v, plan: MaskPlan, layout: Layout, settings: Settings, mask=None) -> torch.Tensor:
    """[N, N] bool: the image keys the image-image edit blocks for each image row of one sample (q, k, v:
    [H, L, D]; mask: its [H or 1, L, L] or None), as deleaker_attention finds them (for tests and benchmarks)."""
    _, sets = _prepared(q, k, v, plan, layout, settings, mask, None)
    cut = torch.zeros(layout.n_img, layout.n_img, dtype=torch.bool, device=q.device)
    for rs in sets:
        if rs.keys.numel():
            cut[rs.rows[:, None], rs.keys[None, :]] = rs.cut
    return cut


def _edited_sample(q, k, v, attend, plan: MaskPlan, layout: Layout, settings: Settings, mask, out, whole=None):
    """Writes into out ([L, H, D]) the attention of one sample (q, k, v: [H, L, D]; mask: its [H or 1, L, L] or
    None) with the edits in its image-query rows. whole: (out [L, H*D], lse [H, L]) of the fused kernel on the
    sample's whole call where that is the model's attention (`out` then is that very buffer: only the edited rows
    are written), or None: the rows left alone then run `attend`, the edited ones one fused call without their
    explicit columns."""
    length, heads, d = out.shape
    if whole is None:
        perm, n_plain = plan.query_order(layout.image.start, length)
        alone = perm[:n_plain]
        if alone.numel():  # rows DeLeaker leaves alone: the model's own attention
            res = attend(q.index_select(1, alone)[None], k[None], v[None],
                         _batch_of_one(_sub_mask(mask, alone, None)))
            out.view(length, heads * d).index_copy_(0, alone, res[0].to(out.dtype))
    ed, sets = _prepared(q, k, v, plan, layout, settings, mask, whole)
    for rs in sets:
        for chunk in ed.chunks(rs):
            out.index_copy_(0, rs.pos[chunk[1]:chunk[2]], ed.output(chunk).transpose(0, 1).to(out.dtype))
            rs.kept.pop(chunk[1], None)
        rs._v_cut = rs._k_cut = rs.out = None


def deleaker_attention(q, k, v, attend, plans: list[MaskPlan], layout: Layout, settings: Settings, batch_rows,
                       mask=None, whole=None) -> torch.Tensor:
    """Attention output [B, L, H*D] with DeLeaker's edits in the image-query rows of `batch_rows`.

    q, k, v: [B, H, L, D]; plans: one MaskPlan per batch row in `batch_rows`; mask: the model's attention mask, if
    any. ``attend(q, k, v, mask)`` is the model's own attention (whatever backend or chained override it uses) on
    [b, H, *, D] tensors, returning [b, rows, H*D]. whole: (out [B, L, H*D], lse [B, H, L]) of kernels.attention on
    the whole call, where the driver found that kernel to be the model's attention (AttentionCall.fused_call): the
    rows DeLeaker leaves alone are then that output as it is, and the edited rows correct it (it is edited in place
    and returned). Otherwise every row DeLeaker leaves alone runs `attend`, and the edited rows kernels.attention
    over the keys they keep as they are, merged with their edited columns."""
    given, mask = mask, attention_mask_4d(mask)
    edited = []
    if settings.edits_anything and len(layout.entities) >= 2:
        edited = [(m, b) for m, (plan, b) in enumerate(zip(plans, batch_rows, strict=True)) if plan.groups]
    if not edited:
        return whole[0] if whole is not None else attend(q, k, v, given)
    batch, heads, length, d = q.shape
    if whole is not None:
        out = whole[0].view(batch, length, heads, d)
    else:
        out = torch.empty(batch, length, heads, d, dtype=q.dtype, device=q.device)
    for m, b in edited:
        sample_mask = None if mask is None else mask[b if mask.shape[0] > 1 else 0]
        sample_whole = None if whole is None else (whole[0][b], whole[1][b])
        _edited_sample(q[b], k[b], v[b], attend, plans[m], layout, settings, sample_mask, out[b], sample_whole)
    out = out.view(batch, length, heads * d)
    plain = [] if whole is not None else [b for b in range(batch) if b not in {b for _, b in edited}]
    if plain:
        res = attend(q[plain], k[plain], v[plain], attention_mask_4d(mask, plain))
        out.index_copy_(0, torch.tensor(plain, device=q.device), res.to(out.dtype))
    return out
