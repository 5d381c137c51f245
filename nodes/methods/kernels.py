"""Attention that also returns each row's log-sum-exp, in one fused call where PyTorch has one (pure: no ComfyUI
import).

`attention(q, k, v, mask)` returns the output and the row normaliser lse = log sum_j exp(q.k_j * scale + mask_j) of
one attention call. It runs the kernel `torch.nn.functional.scaled_dot_product_attention` would pick for these
inputs (`torch._fused_sdp_choice`), called through its lse-returning op, with the arguments SDPA itself passes:
- CPU: `aten._scaled_dot_product_flash_attention_for_cpu` (a bool mask made additive as SDPA does);
- CUDA: `aten._scaled_dot_product_flash_attention` (head size padded to a multiple of 8, as SDPA does; no mask),
  `aten._scaled_dot_product_efficient_attention(..., compute_log_sumexp=True)` (mask padded as SDPA pads it),
  `aten._scaled_dot_product_cudnn_attention(..., compute_log_sumexp=True)`.
Where SDPA would take its math path, or the fused op refuses the inputs, it computes the same exactly in fp32, one
query chunk at a time (`chunked`; no temporary above CHUNK_ELEMENTS fp32 logits). The CUDA branches are written
from PyTorch's dispatch code and are untested here (no GPU); a caller that needs the model's own bits
(nodes/driver) compares them once per run and falls back where they differ.

Conventions: q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv]; mask None, bool (True = may attend) or float
(added to the logits), broadcastable to [B, H, Lq, Lk]. Out [B, H, Lq, Dv] in q's dtype; lse [B, H, Lq] fp32. A row
with no key left gets out 0 (as SDPA gives) and lse -inf.

`merge` combines outputs over disjoint key sets exactly: out = (e^lse1 out1 + e^lse2 out2) / (e^lse1 + e^lse2).
"""

from __future__ import annotations

import math

import torch

CHUNK_ELEMENTS = 1 << 25  # fp32 logits per chunk in the exact fallback (128 MiB)
MATH, FLASH, EFFICIENT, CUDNN = 0, 1, 2, 3  # torch.nn.attention.SDPBackend values


def scale_of(q: torch.Tensor) -> float:
    return 1.0 / math.sqrt(q.shape[-1])


def sdpa_mask(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """An attention mask as SDPA hands it to its fused kernels: bool made additive (0 / -inf) in `dtype`."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.full((), float("-inf"), dtype=dtype, device=mask.device))


def backend(q, k, v, mask=None) -> int:
    """The SDPBackend value `scaled_dot_product_attention` picks for these inputs (MATH where it cannot tell)."""
    try:
        return int(torch._fused_sdp_choice(q, k, v, attn_mask=sdpa_mask(mask, q.dtype), dropout_p=0.0,
                                           is_causal=False))
    except (RuntimeError, TypeError, AttributeError):
        return MATH


def kernel_name(q, k, v, mask=None) -> str:
    """Which kernel `attention` runs for these inputs (for the README and the benchmarks)."""
    choice = backend(q, k, v, mask)
    if q.device.type == "cpu":
        return "flash (CPU)" if choice == FLASH else "chunked (exact, fp32)"
    return {FLASH: "flash", EFFICIENT: "memory-efficient", CUDNN: "cuDNN"}.get(choice, "chunked (exact, fp32)")


def attention(q, k, v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Lq, Dv] in q's dtype, lse [B, H, Lq] fp32) of softmax(q k^T / sqrt(D) + mask) v (3-D q, k, v:
    one batch row)."""
    if q.ndim == 3:
        out, lse = attention(q[None], k[None], v[None], None if mask is None or mask.ndim < 3 else mask[None])
        return out[0], lse[0]
    additive = sdpa_mask(mask, q.dtype)  # made once: the choice and the kernel read the same mask
    choice = backend(q, k, v, additive)
    try:
        if q.device.type == "cpu" and choice == FLASH:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, False, attn_mask=additive)[:2]
        elif q.device.type == "cuda" and choice == FLASH and mask is None:
            out, lse = _cuda_flash(q, k, v)
        elif q.device.type == "cuda" and choice == EFFICIENT:
            out, lse = _cuda_efficient(q, k, v, additive)
        elif q.device.type == "cuda" and choice == CUDNN:
            out, lse = _cuda_cudnn(q, k, v, additive)
        else:
            return chunked(q, k, v, mask)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return chunked(q, k, v, mask)
    lse = lse[..., :q.shape[-2]].reshape(*q.shape[:-1]).float()
    return _dead_rows(out, lse, mask)


def _cuda_flash(q, k, v):  # untested here (no GPU): SDPA's flash branch, with the lse kept
    d = q.shape[-1]
    pad = (-d) % 8
    qp, kp, vp = (torch.nn.functional.pad(t, (0, pad)) if pad else t for t in (q, k, v))
    res = torch.ops.aten._scaled_dot_product_flash_attention(qp, kp, vp, 0.0, False, False, scale=scale_of(q))
    return res[0][..., :v.shape[-1]], res[1]


def _sdpa_bias(mask, q, k):
    """SDPA's preprocess_mask for the memory-efficient and cuDNN kernels: additive, last dim padded to 16, expanded to
    [B, H, Lq, Lk]."""
    if mask is None:
        return None
    m = sdpa_mask(mask, q.dtype)
    lk = k.shape[-2]
    pad = (-lk) % 16
    if pad:
        m = torch.nn.functional.pad(m, (0, pad))[..., :lk]
    return m.expand(q.shape[0], q.shape[1], q.shape[2], lk)


def _cuda_efficient(q, k, v, mask):  # untested here (no GPU)
    res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, _sdpa_bias(mask, q, k), True, 0.0, False,
                                                                 scale=scale_of(q))
    return res[0], res[1]


def _cuda_cudnn(q, k, v, mask):  # untested here (no GPU)
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, _sdpa_bias(mask, q, k), True, 0.0, False,
                                                             False, scale=scale_of(q))
    return res[0], res[1]


def _dead_rows(out, lse, mask):
    """Rows whose mask leaves no key: lse -inf and out 0 (fused kernels return 0 or NaN for both). Only rows whose
    lse is not finite or exactly 0 (what the CPU kernel returns for them) are checked against the mask."""
    if mask is None:
        return out, lse
    suspect = ~torch.isfinite(lse) | (lse == 0)
    if not bool(suspect.any()):
        return out, lse
    allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
    dead = ~allowed.any(dim=-1).expand(lse.shape) & suspect
    if bool(dead.any()):
        lse = lse.masked_fill(dead, float("-inf"))
        out = out.masked_fill(dead[..., None], 0.0)
    return out, lse


def add_mask_(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`logits` with a mask applied in place: bool (True = may attend) as -inf where False, float added."""
    if mask is None:
        return logits
    if mask.dtype == torch.bool:
        return logits.masked_fill_(~mask, float("-inf"))
    return logits.add_(mask.float())


def rows_of(mask, rows: slice):
    """A broadcastable mask's query rows `rows` (dim -2), itself where it has one row for all."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., rows, :]


def chunked(q, k, v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention`, exactly, in fp32, one query chunk at a time."""
    b, h, lq, _ = q.shape
    lk = k.shape[-2]
    scale = scale_of(q)
    kf, vf = k.float(), v.float()
    out = torch.empty(b, h, lq, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, lq, device=q.device)
    step = max(1, CHUNK_ELEMENTS // max(1, b * h * lk))
    for s in range(0, lq, step):
        e = min(lq, s + step)
        logits = add_mask_(torch.matmul(q[:, :, s:e].float() * scale, kf.transpose(-1, -2)), rows_of(mask, slice(s, e)))
        top = logits.amax(dim=-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        weights = logits.sub_(top).exp_()
        total = weights.sum(dim=-1, keepdim=True)
        lse[:, :, s:e] = (total.log() + top)[..., 0]
        o = torch.matmul(weights, vf).div_(total)
        out[:, :, s:e] = torch.where(total > 0, o, torch.zeros_like(o))
    return out, lse


def merge(out1, lse1, out2, lse2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two attention outputs over disjoint key sets ([..., L, D], lse [..., L]) as the output over their union, in fp32
    (out in out1's dtype), stably: each weighted by exp(lse - max); a row with no key on either side gives 0."""
    top = torch.maximum(lse1, lse2)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w1, w2 = (lse1 - top).exp(), (lse2 - top).exp()
    total = w1 + w2
    safe = torch.where(total > 0, total, torch.ones_like(total))
    o1 = torch.where(w1[..., None] > 0, out1.float(), torch.zeros((), device=out1.device))
    o2 = torch.where(w2[..., None] > 0, out2.float(), torch.zeros((), device=out2.device))
    out = (o1 * (w1 / safe)[..., None] + o2 * (w2 / safe)[..., None]).to(out1.dtype)
    return out, torch.where(total > 0, total.log() + top, torch.full_like(total, float("-inf")))


def comfy_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A ComfyUI attention mask ([L, L], [B, L, L] or [B, H, L, L]) as ComfyUI's SDPA attention passes it on:
    [1, 1, L, L], [B, 1, L, L] or as it is."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    return mask[:, None] if mask.ndim == 3 else mask


def fused_attention(q, k, v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention` in the layout a model's attention returns: (out [B, Lq, H*Dv], lse [B, H, Lq] fp32)."""
    out, lse = attention(q, k, v, mask)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1), lse
