"""What ComfyUI hands a patch's wrappers and attention override, read once (ComfyUI's calling conventions; no
ComfyUI import): an APPLY_MODEL call's arguments, the step from the sigma schedule, which batch rows are which
conditioning entries, and an attention call's q/k/v in the contract's [B, H, L, D] layout."""

from __future__ import annotations

import torch

from ..methods import kernels
from ..methods.contract import MethodError, step_of

ATTENTION_ARGS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
APPLY_MODEL_ARGS = ("x", "t", "c_concat", "c_crossattn", "control", "transformer_options")
OUTER_CALL = "leakless_outer_call"  # transformer_options key: this attention call is a part of an outer patch's call


def apply_model_args(args, kwargs):
    """(x, c_crossattn, transformer_options, the model's other inputs) of an APPLY_MODEL wrapper's call."""
    bound = dict(zip(APPLY_MODEL_ARGS, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in APPLY_MODEL_ARGS})
    extra = {k: v for k, v in kwargs.items() if k not in APPLY_MODEL_ARGS}
    return bound["x"], bound.get("c_crossattn"), bound.get("transformer_options") or {}, extra


def sigma_step(transformer_options) -> tuple[int, int] | MethodError:
    """(step, steps) of this model call from the sampler's schedule; the error when it gave none."""
    sample_sigmas, sigmas = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
    if sample_sigmas is None or sigmas is None:
        return MethodError("model", "the model was called without a sigma schedule (outside a sampler).",
                           "sample with KSampler, KSamplerAdvanced or SamplerCustomAdvanced.")
    return step_of(float(sigmas.flatten()[0]), sample_sigmas.flatten().float().cpu().tolist())


def cond_rows(transformer_options, batch: int, uuids=None) -> list[int]:
    """Batch rows of the cond chunks (cond_or_uncond flag 0) of a model call with `batch` rows; with `uuids`, of
    the chunks whose conditioning entry's uuid is in it instead (ComfyUI's transformer_options["uuids"])."""
    flags = transformer_options.get("cond_or_uncond") or [0]
    per = batch // len(flags)
    if uuids is not None:
        chunks = transformer_options.get("uuids") or []
        return [c * per + i for c, u in enumerate(chunks) if u in uuids for i in range(per)]
    return [c * per + i for c, flag in enumerate(flags) if flag == 0 for i in range(per)]


def entries(transformer_options, batch: int, rows: list[int]) -> tuple:
    """The uuids of the conditioning entries whose batch chunks hold `rows`."""
    uuids = transformer_options.get("uuids") or []
    per = batch // len(transformer_options.get("cond_or_uncond") or [0])
    return tuple(uuids[r // per] for r in rows[::per]) if uuids else ()


class ComfyAttention:
    """One call of ComfyUI's attention as an override receives it: q, k, v viewed as [B, H, L, D] whatever the
    model's own layout ([B, L, H*D] for SD3, HiDream and the UNets; SD3's v is [B, L, H, D]); `plain()` runs the
    call unchanged (once: its output is kept), `attend` the attention that was there before on any rows and keys,
    `fused()` the fused kernel with the row log-sum-exp (kernels.py) on the whole call, in the call's own token
    order, as ComfyUI's SDPA attention would pass it (once: kept), and `verdict()` whether the two are the same
    bits."""

    def __init__(self, func, previous, args, kwargs):
        self.func, self.previous, self.args, self.kwargs = func, previous, args, kwargs
        bound = dict(zip(ATTENTION_ARGS, args, strict=False))
        bound.update(kwargs)
        self.heads, self.mask = bound.pop("heads"), bound.pop("mask", None)
        q, k, v = (bound.pop(n) for n in "qkv")
        if not bound.pop("skip_reshape", False):
            q, k, v = (t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        self.q, self.k, self.v, self._rest = q, k, v, bound
        self._plain = self._fused = self._reordered = None

    @property
    def transformer_options(self) -> dict:
        return self.kwargs.get("transformer_options") or {}

    @property
    def self_attention(self) -> bool:
        """Queries and keys are one sequence, and the output is [B, L, H*D] (what a patch returns)."""
        return self.k.shape[2] == self.q.shape[2] and not self._rest.get("skip_output_reshape", False)

    def plain(self):
        if self._plain is None:
            if self.previous is not None:
                self._plain = self.previous(self.func, *self.args, **self.kwargs)
            else:
                self._plain = self.func(*self.args, **self.kwargs)
        return self._plain

    def fused(self, index=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(out [B, L, H*D], lse [B, H, L]) of kernels.fused_attention on the call as the model passed it; with
        `index` (a patch's token order), its rows in that order (a copy: the same bits)."""
        if self._fused is None:
            q, k, v, mask = self.q, self.k, self.v, self.mask
            self._fused = kernels.fused_attention(q, k, v, kernels.comfy_mask(mask))
        out, lse = self._fused
        if index is None:
            return out, lse
        if self._reordered is None:
            self._reordered = (out.index_select(1, index), lse.index_select(2, index))
        return self._reordered

    def fused_output(self, out):
        """The fused output in the call's own order when `out` is fused(index)'s reordering of it (so that a patch
        returning it costs no reordering back), else None."""
        if self._reordered is not None and out is self._reordered[0]:
            return self._fused[0]
        return None

    def verdict_key(self) -> tuple:
        """What a verdict holds for: dtype, device, mask kind and the call's shape."""
        q, k, mask = self.q, self.k, self.mask
        kind = None if mask is None else (str(mask.dtype), mask.ndim, mask.shape[-2] == 1)
        return str(q.dtype), str(q.device), kind, tuple(q.shape[1:]), k.shape[2]

    def verdict(self) -> bool:
        """Whether the fused kernel's output on this call is the model's own output, bit for bit (runs both)."""
        model, (out, _) = self.plain(), self.fused()
        return torch.is_tensor(model) and model.shape == out.shape and model.dtype == out.dtype and \
            bool(torch.equal(model, out))

    def attend(self, q, k, v, mask):
        """The model's own attention on [b, H, rows, D] (any rows, edited keys): [b, rows, H*D]. A Leakless patch
        chained below sees it as a part of this call (OUTER_CALL) and leaves it alone."""
        kw = dict(self._rest, mask=mask, skip_reshape=True)
        kw["transformer_options"] = {**self.transformer_options, OUTER_CALL: self}
        if self.previous is not None:
            return self.previous(self.func, q, k, v, self.heads, **kw)
        return self.func(q, k, v, self.heads, **kw)

