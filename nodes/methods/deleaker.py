"""DeLeaker (Ventura, Toker et al., 2025) for joint text-image attention: the algorithm, memory-bounded.

Pure PyTorch; the ComfyUI glue is ``deleaker_nodes.py``. The reference implementation materialises the full
B x H x L x L logits and a same-sized history in every layer; here nothing of that size exists:

- entity scores (image query -> entity text tokens, averaged over the entity's tokens and the heads) need only the
  image rows' normalisers: on a GPU one fused attention call per query chunk whose values are the entity
  indicators gives them without writing any logits; on a CPU the logits of one query chunk at a time;
- the mask history is the running mean of those scores ([B, K, N]), which equals the reference's running mean of
  the full probabilities read at the same columns (the mean is linear);
- text edits are key edits: blocking entity j's tokens for rows of M_i drops those keys, and multiplying the
  self-entity logits by alpha equals multiplying those key vectors by alpha. Image rows with the same entity
  membership get the same edits; a MaskPlan, made once per mask state, orders the rows so that each such group is
  a contiguous run, and each group is one call of the model's own attention (any chained backend) over edited keys;
- the image-image statistics need probabilities only on the M_i x M_j blocks (with each row's edited normaliser,
  from per-chunk fp32 logits), and the blocks become a boolean mask for that group's fused SDPA calls.
Softmax and statistics run in fp32. Every edited row keeps the non-entity text tokens, so no row is all -inf. A
mask the model itself passes to attention is kept everywhere (added after the edits).

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
from .settings import Setting

CHUNK_ELEMENTS = 1 << 25  # fp32 logits per chunk (128 MiB): bounds every per-chunk temporary of this module
IMAGE_PROBS_ELEMENTS = 1 << 27  # keep the mask-history pass's image->image probabilities up to 512 MiB (2 x 1024²)


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


def kept_keys(layout: Layout, blocked: tuple[int, ...], length: int, device):
    """Key positions without the `blocked` entities' tokens, each entity's token positions among them, and where
    the image keys begin among them."""
    key = ("kept", blocked, length, str(device))
    if key not in layout._memo:
        drop = {p for e in blocked for p in layout.entities[e]}
        kept = [p for p in range(length) if p not in drop]
        where = {p: n for n, p in enumerate(kept)}
        shifted = {e: torch.tensor([where[p] for p in t], device=device)
                   for e, t in enumerate(layout.entities) if e not in blocked}
        image_at = layout.image.start - sum(p < layout.image.start for p in drop)
        layout._memo[key] = (torch.tensor(kept, device=device), shifted, image_at)
    return layout._memo[key]


def _softmax_parts_(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim with one exp pass, in place: (exp(logits - max), 1 / row sums)."""
    weights = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return weights, weights.sum(dim=-1, keepdim=True).reciprocal_()


def _rows_per_chunk(heads: int, keys: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, heads * keys))


def entity_scores(q: torch.Tensor, k: torch.Tensor, layout: Layout, mask=None, fused: bool | None = None):
    """mean over heads and each entity's tokens of softmax(q k^T / sqrt(d)) on the image rows: [B, K, N].

    q, k: [B, H, L, D] after RoPE; mask: the model's attention mask for these rows ([B or 1, H or 1, L, L]) or None.
    fused (None: on every device but the CPU) reads the scores off one fused fp32 attention call per query chunk
    whose values are the entity indicators, so no logits are written to memory; otherwise [B, H, chunk, L] logits
    exist one chunk at a time (faster on a CPU, where the fused kernel's value product costs more than it saves).
    """
    if fused is None:
        fused = q.device.type != "cpu"
    return _fused_scores(q, k, layout, mask) if fused else _chunked_scores(q, k, layout, mask, image_probs=False)[0]


def scores_and_image_probs(q, k, layout: Layout, mask=None, image_probs=True):
    """entity_scores, and (image_probs) from the same logits the head-averaged image->image probabilities
    [B, N, N] that the first entity pair's image-image statistics need, so a layer that updates the mask history
    does not compute them twice; None where they would exceed IMAGE_PROBS_ELEMENTS (the statistics then make
    their own)."""
    if image_probs and q.shape[0] * layout.n_img ** 2 <= IMAGE_PROBS_ELEMENTS:
        return _chunked_scores(q, k, layout, mask, image_probs=True)
    return entity_scores(q, k, layout, mask), None


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
        sub = None if mask is None else mask[:, :, rows]
        mass = F.scaled_dot_product_attention(q[:, :, rows].float(), kf, values, attn_mask=sub)[..., :n_ent]
        if sub is not None:  # a row with no key left is NaN, as its softmax is (the fused kernels give 0)
            dead = ~sub.any(-1) if sub.dtype == torch.bool else torch.isneginf(sub).all(-1)
            mass = mass.masked_fill(dead[..., None], float("nan"))
        out[:, :, start:end] = mass.mean(dim=1).transpose(1, 2)
    return out


def _chunked_scores(q, k, layout: Layout, mask, image_probs: bool):
    b, h, length, d = q.shape
    scale = 1.0 / math.sqrt(d)
    cols = [entity_index(layout, e, q.device) for e in range(len(layout.entities))]
    kf = k.float()
    out = torch.empty(b, len(cols), layout.n_img, device=q.device, dtype=torch.float32)
    probs = torch.empty(b, layout.n_img, layout.n_img, device=q.device) if image_probs else None
    for start, end in _chunks(layout.n_img, _rows_per_chunk(h, length)):
        rows = slice(layout.image.start + start, layout.image.start + end)
        logits = torch.matmul(q[:, :, rows].float() * scale, kf.transpose(-1, -2))
        if mask is not None:
            _add_mask(logits, mask[:, :, rows])
        weights, norm = _softmax_parts_(logits)
        for e, c in enumerate(cols):
            out[:, e, start:end] = (weights[..., c] * norm).mean(dim=(-1, 1))
        if probs is not None:
            probs[:, start:end] = weights[..., layout.image].mul_(norm).mean(dim=1)
    return out, probs


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


@dataclass(frozen=True)
class RowGroup:
    """Image rows inside the same entities' masks: they get the same text edits."""

    rows: torch.Tensor  # image row indices (long)
    members: tuple[int, ...]  # the entities whose masks hold these rows
    start: int  # where these rows begin in MaskPlan.order


class MaskPlan:
    """What DeLeaker derives from one sample's masks ([K, N] bool) alone, made once per mask state: the image rows
    ordered by entity membership (rows in no mask first, then one run per group of rows with the same entities) and
    each group's text edits after any number of entity pairs. Built with one host sync; the per-call work then
    slices contiguous runs instead of gathering through boolean masks."""

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
        self._query_order, self._text_edits = {}, {}

    def text_edits(self, group: RowGroup, pairs: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(entities whose tokens the group's rows may not see, exponent of alpha on each entity's logits) after
        the first `pairs` entity pairs (all by default), in the reference's pair order."""
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


def _edited_keys(k, v, layout: Layout, blocked, powers, alpha: float):
    """Keys and values ([H, L', D]) without the tokens of the `blocked` entities, each other entity's keys
    multiplied by alpha^power (the same as its logits); the kept key positions (None: all) and where the image keys
    begin among them."""
    if not blocked and not any(powers):
        return k, v, None, layout.image.start
    keep, shifted, image_at = kept_keys(layout, blocked, k.shape[-2], k.device)
    k2 = k.index_select(-2, keep)
    v2 = None if v is None else v.index_select(-2, keep)
    for e, power in enumerate(powers):
        if power and e not in blocked:
            k2[..., shifted[e], :] *= alpha ** power
    return k2, v2, keep, image_at


@dataclass(frozen=True)
class ImageBlock:
    """One direction of one entity pair's image-image edit: keys in M_dst blocked for rows in M_src."""

    blocked: torch.Tensor  # [rows, N] bool, False outside M_dst; rows: the groups holding src, in plan order
    starts: dict  # group index -> its first row in `blocked`

    def rows_of(self, group_index: int, c0: int, c1: int) -> torch.Tensor | None:
        start = self.starts.get(group_index)
        return None if start is None else self.blocked[start + c0:start + c1]


def _image_blocks_of(group_index: int, blocks, c0: int, c1: int) -> torch.Tensor | None:
    """[c1 - c0, N] bool: the image keys blocked for rows c0..c1 of a group, or None when no block covers it."""
    out = None
    for block in blocks:
        part = block.rows_of(group_index, c0, c1)
        if part is not None:
            out = part.clone() if out is None else out.logical_or_(part)
    return out


def _nonzero_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of the non-zero entries, without a host sync (NaN when there are too few)."""
    nonzero = x != 0
    count = nonzero.sum()
    mean = x.sum() / count
    var = (((x - mean) * nonzero) ** 2).sum() / (count - 1)
    return mean, var.sqrt()


def image_image_blocks(q, k, plan: MaskPlan, layout: Layout, settings: Settings, mask=None,
                       first_pair_probs=None) -> list[ImageBlock]:
    """The image-image edit of one sample (q, k: [H, L, D]; mask: its [H or 1, L, L] attention mask), pair by pair
    as the reference does: the head-averaged probability of rows of M_i on keys of M_j (and back), with the text
    edits and image blocks of the earlier pairs, blocked above mean + beta2 * std of the block's non-zero values.
    Logits exist only per query chunk (fp32). The first pair sees no earlier edits, so its probabilities may be
    given ([N, N], from scores_and_image_probs)."""
    heads, _, d = q.shape
    scale = 1.0 / math.sqrt(d)
    kf = k.float()
    blocks: list[ImageBlock] = []
    for p, (i, j) in enumerate(plan.pairs):
        if not (plan.nonempty[i] and plan.nonempty[j]):
            continue
        parts, starts, done = {i: [], j: []}, {i: {}, j: {}}, {i: 0, j: 0}
        for g_index, group in enumerate(plan.groups):
            sides = [s for s in (i, j) if s in group.members]
            if not sides:
                continue
            keys, _, keep, img0 = _edited_keys(kf, None, layout, *plan.text_edits(group, p), settings.alpha)
            for s in sides:
                starts[s][g_index] = done[s]
                done[s] += group.rows.numel()
            if p == 0 and first_pair_probs is not None:
                p_img = first_pair_probs.index_select(0, group.rows)
                for s in sides:
                    parts[s].append(p_img * plan.in_mask[j if s == i else i])
                continue
            for c0, c1 in _chunks(group.rows.numel(), _rows_per_chunk(heads, keys.shape[-2])):
                rows = layout.image.start + group.rows[c0:c1]
                logits = torch.matmul(q.index_select(-2, rows).float() * scale, keys.transpose(-1, -2))
                _add_mask(logits, _sub_mask(mask, rows, keep))
                earlier = _image_blocks_of(g_index, blocks, c0, c1)
                if earlier is not None:
                    logits[..., img0:img0 + layout.n_img].masked_fill_(earlier, float("-inf"))
                weights, norm = _softmax_parts_(logits)
                p_img = weights[..., img0:img0 + layout.n_img].mul_(norm).mean(dim=0)  # head mean: [rows, N]
                for s in sides:  # zero outside M_other, as the reference's masked block
                    parts[s].append(p_img * plan.in_mask[j if s == i else i])
        for s, t in ((i, j), (j, i)):
            prob = torch.cat(parts[s])
            mean, std = _nonzero_mean_std(prob)
            blocked = (prob > mean + settings.beta_image * std).logical_and_(plan.masks[t])
            blocks.append(ImageBlock(blocked, starts[s]))
    return blocks


def _group_attention(q_rows, k, v, g_index, group, plan, blocks, layout, settings, attend, mask, rows):
    """[R, H*D] attention of one group's image rows (q_rows: [H, R, D]; rows: their joint-sequence indices) with
    every edit: through the model's own attention with edited keys, or, where image keys are blocked, through one
    fused SDPA call per query chunk with a boolean mask."""
    heads = q_rows.shape[0]
    keys, values, keep, img0 = _edited_keys(k, v, layout, *plan.text_edits(group), settings.alpha)
    covering = [b for b in blocks if g_index in b.starts]
    if not any(bool(b.rows_of(g_index, 0, group.rows.numel()).any()) for b in covering):
        return attend(q_rows[None], keys[None], values[None], _batch_of_one(_sub_mask(mask, rows, keep)))[0]
    out = []
    for c0, c1 in _chunks(group.rows.numel(), _rows_per_chunk(heads, keys.shape[-2])):
        allowed = torch.ones(c1 - c0, keys.shape[-2], dtype=torch.bool, device=q_rows.device)
        allowed[:, img0:img0 + layout.n_img] = ~_image_blocks_of(g_index, covering, c0, c1)
        attn_mask = allowed[None]
        sub = _sub_mask(mask, rows[c0:c1], keep)
        if sub is not None:
            attn_mask = attn_mask & sub if sub.dtype == torch.bool else \
                sub.to(q_rows.dtype).masked_fill(~attn_mask, float("-inf"))
        o = F.scaled_dot_product_attention(q_rows[None, :, c0:c1], keys[None], values[None], attn_mask=attn_mask[None])
        out.append(o[0].transpose(0, 1).reshape(c1 - c0, -1))
    return torch.cat(out)


def _edited_sample(q, k, v, attend, plan: MaskPlan, layout: Layout, settings: Settings, mask, probs):
    """[L, H*D] attention of one sample (q, k, v: [H, L, D]) with the edits in its image-query rows: one gather of
    the queries into plan order, one call per row group, one scatter back."""
    blocks = image_image_blocks(q, k, plan, layout, settings, mask, probs) if settings.image_image else []
    perm, n_plain = plan.query_order(layout.image.start, q.shape[1])
    q_perm = q.index_select(1, perm)
    plain = _batch_of_one(_sub_mask(mask, perm[:n_plain], None))
    pieces = [attend(q_perm[None, :, :n_plain], k[None], v[None], plain)[0]]
    for g_index, group in enumerate(plan.groups):
        at = n_plain + group.start - plan.n_plain
        span = slice(at, at + group.rows.numel())
        pieces.append(_group_attention(q_perm[:, span], k, v, g_index, group, plan, blocks, layout, settings,
                                       attend, mask, perm[span]))
    out = torch.cat([piece.to(pieces[0].dtype) for piece in pieces])
    return torch.empty_like(out).index_copy_(0, perm, out)


def deleaker_attention(q, k, v, attend, plans: list[MaskPlan], layout: Layout, settings: Settings, batch_rows,
                       mask=None, image_probs=None) -> torch.Tensor:
    """Attention output [B, L, H*D] with DeLeaker's edits in the image-query rows of `batch_rows`.

    q, k, v: [B, H, L, D]; plans: one MaskPlan per batch row in `batch_rows`; mask: the model's attention mask, if
    any; image_probs: this layer's [len(batch_rows), N, N] from scores_and_image_probs, if made.
    ``attend(q, k, v, mask)`` is the model's own attention (whatever backend or chained override it uses) on
    [b, H, *, D] tensors, returning [b, rows, H*D]: it runs every row DeLeaker leaves alone, and the edited rows
    whose edits are all on text keys (those keys removed or scaled)."""
    edited = {}
    given, mask = mask, attention_mask_4d(mask)
    if settings.edits_anything and len(layout.entities) >= 2:
        for m, (plan, b) in enumerate(zip(plans, batch_rows, strict=True)):
            if plan.groups:
                sample_mask = None if mask is None else mask[b if mask.shape[0] > 1 else 0]
                probs = None if image_probs is None else image_probs[m]
                edited[b] = _edited_sample(q[b], k[b], v[b], attend, plan, layout, settings, sample_mask, probs)
    if not edited:
        return attend(q, k, v, given)
    plain = [b for b in range(q.shape[0]) if b not in edited]
    parts = dict(edited)
    if plain:
        out = attend(q[plain], k[plain], v[plain], attention_mask_4d(mask, plain))
        parts.update(zip(plain, out, strict=True))
    dtype = next(iter(parts.values())).dtype
    return torch.stack([parts[b].to(dtype) for b in range(q.shape[0])])
