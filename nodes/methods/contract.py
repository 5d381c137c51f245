"""The contract between a sampling-time method and ComfyUI's sampling (pure: no ComfyUI import).

A method is a *patch*: a per-run controller that never sees a ModelPatcher, names no node and imports no ComfyUI.
The driver (nodes/driver/) alone implements this contract. It makes a fresh run state for every sampling run
(`Patch.new_run`), and hands the patch:
- once per model call, a `ModelCall`: the model's registry entry, the step and step count from the sigma schedule,
  which batch rows carry the patch's prompt, the layout of a main attention call and how many main blocks there
  are (`Patch.begin` returns the patch's state for this model call, or None when it has nothing to do in it);
- once per attention call inside it, an `AttentionCall`: q, k, v as [B, H, L, D] in the call's own token order, the
  model's own mask, the block's index and kind, the attention that was there before (`attend`), to run the rows it
  leaves alone, and the fused kernel that also returns the row log-sum-exp (`fused`, kernels.py), with the driver's
  verdict on whether that kernel IS the model's attention bit for bit (`fused_is_model`) and its result on the
  whole call (`fused_call`) (`Patch.attention` returns the call's output, or None to leave the call to the model);
- or, for a patch that works on whole model calls (ToMe), a `ModelRunner` to run the model itself
  (`Patch.model_call`);
- at the end of a completed run, the output latent (`Patch.finish` returns what the run's result nodes show).
Bad input found while sampling is a `MethodError` (problem and fix); the driver restates it naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from ..registry.layout import Layout
from . import kernels
from ..registry.models import DiffusionModel


class MethodError(ValueError):
    """Bad input a method finds while it runs: which of its node's inputs, the problem and the fix."""

    def __init__(self, input_name: str, problem: str, fix: str = ""):
        self.input_name, self.problem, self.fix = input_name, problem, fix
        super().__init__(f"input '{input_name}': {problem}" + (f" Fix: {fix}" if fix else ""))


def step_of(sigma: float, schedule: list[float]) -> tuple[int, int]:
    """(step index, number of steps) of a model call at `sigma` in a sampler's sigma `schedule`: the largest i
    with schedule[i] >= sigma, so samplers that evaluate between schedule sigmas (DPM, SDE, churn) map to the step
    they are in; never counted from calls."""
    index = max((i for i, s in enumerate(schedule) if s >= sigma * (1 - 1e-4) - 1e-8), default=0)
    return min(index, len(schedule) - 2), len(schedule) - 1


@dataclass
class ModelCall:
    """One model call as the patch sees it."""

    model: DiffusionModel  # the registry entry
    batch: int  # batch rows of the call
    rows: tuple[int, ...]  # batch rows that carry the patch's prompt (its tagged positive entries)
    entries: tuple  # which conditioning entries those rows are (a patch keeps state per set of entries)
    step: int | None  # from the sigma schedule; None when the sampler gave none (see `schedule_error`)
    steps: int | None
    layout: Layout | None  # joint models: a main attention call's layout
    n_blocks: int = 0  # joint models: main blocks per model call
    n_first: int = 0  # joint models: blocks in the first list (FLUX's double blocks)
    latent: tuple[int, ...] = ()  # the shape of the model call's latent
    schedule_error: MethodError | None = None

    def need_step(self) -> tuple[int, int]:
        """(step, steps); the driver's error when the sampler gave no sigma schedule."""
        if self.step is None:
            raise self.schedule_error or MethodError("model", "the sampler gave no sigma schedule.")
        return self.step, self.steps


class AttentionCall:
    """One attention call as the patch sees it. q, k, v ([B, H, L, D]) and mask are in the methods' canonical
    token order (text first, the layout's); `block`: the index of this main block in the model call (None: not a
    main block); `kind`: "main", "other" (a refiner, text fusion, image-only attention, a UNet's self-attention),
    "cross" (a UNet's cross-attention; `grid` is its level's image grid) or "part" (a piece of an outer Leakless
    patch's edited call: leave it alone). `attend(q, k, v, mask)` runs the attention that was there before on
    [b, H, rows, D] tensors (any rows, edited keys), returning [b, rows, H*D].

    Where the model's own order differs (HiDream: image first), `order` (the driver's) holds the model's position of
    each canonical position, and q, k, v, mask are reordered from the model's tensors only when first read;
    `model_order(layout)` gives the model's tensors and `layout` in that order instead (nothing copied), and a
    patch that returns its output in that order sets `output_in_model_order`.

    `fused(q, k, v, mask)` -> (out [b, rows, H*D], lse [b, H, rows] fp32) runs kernels.attention: the fused kernel
    SDPA would pick, with the row log-sum-exp. `fused_is_model`: whether that kernel's output on this call is the
    model's own, bit for bit; the driver finds out once per sampling run (per dtype, device, mask kind and call
    shape) by running both on the first call that asks and comparing (False where no driver says). `fused_call()`:
    (out [B, L, H*D], lse [B, H, L]) of `fused` on the whole call, computed once, on the call's tensors in the
    model's own token order (so where fused_is_model, out is exactly what the model returns), rows in canonical
    order (`model_order=True`: in the model's); a read-only patch may return that out and read the lse for free."""

    def __init__(self, q, k, v, mask, kind: str, block: int | None = None, grid: tuple[int, int] | None = None,
                 attend=None, fused=kernels.fused_attention, verify=None, whole=None, order=None):
        self._model = (q, k, v, mask)  # as the model passed them
        self.kind, self.block, self.grid, self.attend = kind, block, grid, attend
        self.fused = fused
        self.verify = verify  # the driver's: () -> bool, the fused_is_model verdict
        self.whole = whole  # the driver's: (model_order: bool) -> fused_call()'s value
        self.order = order  # [L] long: the model's position of each canonical position (None: the same order)
        self.output_in_model_order = False  # set by a patch whose output is in the model's order
        self._memo = {}

    def __repr__(self):
        return f"AttentionCall(kind={self.kind!r}, block={self.block}, shape={tuple(self._model[0].shape)})"

    def _canonical(self, i: int):
        if i not in self._memo:
            t = self._model[i]
            if self.order is not None and t is not None:
                if i == 3:  # the mask: its query rows (when it has one per query) and its keys
                    t = t.index_select(-2, self.order) if t.shape[-2] > 1 else t
                    t = t.index_select(-1, self.order) if t.shape[-1] > 1 else t
                else:
                    t = t.index_select(2, self.order)
            self._memo[i] = t
        return self._memo[i]

    q = property(lambda self: self._canonical(0))
    k = property(lambda self: self._canonical(1))
    v = property(lambda self: self._canonical(2))
    mask = property(lambda self: self._canonical(3))

    def model_order(self, layout: Layout):
        """(q, k, v, mask, layout) in the model's own token order: the call's tensors as the model passed them and a
        canonical-order `layout` with its segments and phrases moved to where the model has them."""
        q, k, v, mask = self._model
        if self.order is None:
            return q, k, v, mask, layout
        key = ("model order", len(self.order))  # a layout is laid out for one order: no host sync per call
        if key not in layout._memo:
            where = self.order.tolist()
            segments = tuple(replace(s, start=where[s.start]) for s in layout.segments)
            entities = tuple(tuple(where[p] for p in e) for e in layout.entities)
            layout._memo[key] = replace(layout, segments=segments, entities=entities)
        return q, k, v, mask, layout._memo[key]

    @property
    def fused_is_model(self) -> bool:
        if "is_model" not in self._memo:
            self._memo["is_model"] = bool(self.verify()) if self.verify is not None else False
        return self._memo["is_model"]

    def fused_call(self, model_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("whole", model_order or self.order is None)
        if key not in self._memo:
            if self.whole is not None:
                self._memo[key] = self.whole(model_order)
            else:
                q, k, v, mask = self._model if model_order else (self.q, self.k, self.v, self.mask)
                self._memo[key] = self.fused(q, k, v, kernels.comfy_mask(mask))
        return self._memo[key]


class ModelRunner(Protocol):
    """What a whole-model-call patch (ToMe) may do with the model call it wraps (the driver implements it)."""

    x: torch.Tensor  # the call's latent rows
    sigma: torch.Tensor  # each row's sigma
    context: torch.Tensor | None  # the call's cross-attention context

    def run(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The model call on these rows (the rest as the sampler gave it)."""

    def denoise(self, x, context, samples: list[int]) -> torch.Tensor:
        """The denoised prediction for latent rows `x` with `context`, row i of `x` being sample samples[i]."""

    def cross_attention_maps(self, x, context, samples: list[int], layers) -> list[tuple[torch.Tensor, tuple]]:
        """The head-averaged cross-attention probabilities ([b, N, T], their grid) at UNet `layers`, with
        gradients; the pass stops after the last of them."""

    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's input scaling c_in at `sigma`."""

    def check_interrupt(self) -> None:
        """Raises when the user interrupted the run."""

    def progress(self, total: int) -> object:
        """A progress bar of `total` ticks (its update(n) / update_absolute(n))."""

    def free_memory(self) -> None:
        """After an out-of-memory error: the device's cache emptied."""


class Patch(Protocol):
    """A sampling-time method. `edits`: it changes what the model computes (False: it only reads, and the images
    stay bit-identical)."""

    edits: bool

    def new_run(self, info: dict) -> object:
        """State for one sampling run; `info`: what the sampler gave (cfg, its negative conditioning)."""

    def begin(self, run, call: ModelCall) -> object | None:
        """The patch's state for one model call, or None when it has nothing to do there."""

    def attention(self, run, state, call: AttentionCall) -> torch.Tensor | None:
        """[B, L, H*D] for this attention call, or None to leave it to the model."""

    def finish(self, run, output: torch.Tensor) -> object | None:
        """The run's result (None: nothing to show) once the sampling completed with `output`."""
