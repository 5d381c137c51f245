"""The attention heatmap as a patch: a per-run controller over the contract that only reads (pure: no ComfyUI
import).

In the chosen steps and blocks it scores the image rows' attention to each word's tokens on the rows of its prompt
and changes no call's output, so the images stay bit-identical: where the driver found the fused kernel to be the
model's attention bit for bit (AttentionCall.fused_is_model), it returns that kernel's output on the call and reads
the scores off its row log-sum-exp (deleaker.scores_from_lse: the image rows' logits on the words' tokens only);
elsewhere it leaves the call to the model and scores in a separate exact pass (deleaker.entity_scores). Joint models:
their main blocks, on the image token grid. UNets (SDXL, SD1.5): their cross-attention calls, each on its level's
grid, brought to the latent's grid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from . import deleaker, heatmap
from ..registry.layout import cross_layout
from .contract import AttentionCall, MethodError, ModelCall
from .phrases import Phrases
from .settings import Setting

START_PERCENT = Setting("start_percent", "float", 0.0, "The first fraction of the sampling steps to record "
                        "(default {default}: the first step).", 0.0, 1.0, 0.05)
END_PERCENT = Setting("end_percent", "float", 1.0, "Record up to this fraction of the steps (default {default}: the "
                      "last step).", 0.0, 1.0, 0.05)
FIRST_BLOCK = Setting("first_block", "float", 0.0, "The first fraction of the model's main blocks to record (UNet: of "
                      "its cross-attention calls; default {default}).", 0.0, 1.0, 0.05)
LAST_BLOCK = Setting("last_block", "float", 1.0, "Record up to this fraction of the blocks (default {default}: the "
                     "last block).", 0.0, 1.0, 0.05)
SETTINGS = (START_PERCENT, END_PERCENT, FIRST_BLOCK, LAST_BLOCK)  # Attention Heatmap's inputs after the entities
OPACITY = Setting("opacity", "float", 0.6, "Heat colour strength where the map is at its max (default {default}); 0 "
                  "shows the images.", 0.0, 1.0, 0.05)  # Heatmap Show
ENCODE_FIX = ("connect Leakless Heatmap Encode's conditioning as the positive prompt of the sampler that uses this "
              "model.")


class Run:
    """One sampling run's sums, one per set of positive entries."""

    def __init__(self):
        self.sums: dict[tuple, heatmap.HeatmapSum] = {}
        self.cells: dict[tuple, tuple[int, int]] = {}
        self.windows: dict[tuple, tuple] = {}
        self.lock = threading.Lock()

    def sum_of(self, entries: tuple, grid, cell, window) -> heatmap.HeatmapSum:
        with self.lock:
            self.cells.setdefault(entries, cell)
            self.windows.setdefault(entries, window)
            return self.sums.setdefault(entries, heatmap.HeatmapSum(grid))


@dataclass
class _Call:
    call: ModelCall
    layout: object  # the words placed (None: another prompt)
    blocks: range  # the main blocks (UNet: cross-attention calls) to score
    total: heatmap.HeatmapSum
    cross: dict = field(default_factory=dict)  # a UNet level's grid -> its cross-attention layout (made once)


@dataclass(frozen=True)
class HeatmapResult:
    """The maps of one completed sampling run."""

    maps: torch.Tensor  # [cond rows, K, h, w] fp32, on the CPU
    names: tuple[str, ...]
    window: tuple[int, int, int, int]  # the latent's own part of the grid (top, left, height, width)
    cell: tuple[int, int]  # latent pixels per grid cell


class HeatmapPatch:
    edits = False

    def __init__(self, words: Phrases, steps: tuple[float, float], blocks: tuple[float, float]):
        self.words, self.steps, self.blocks = words, steps, blocks

    def new_run(self, info: dict) -> Run:
        return Run()

    def begin(self, run: Run, call: ModelCall) -> _Call | None:
        step, steps = call.need_step()
        if not call.rows or step not in heatmap.block_range(steps, *self.steps):
            return None
        layout = call.layout.with_phrases(self.words.streams(), call.model.left_padded)
        cell = call.layout.cell if call.model.joint else (1, 1)
        total = run.sum_of(call.entries, call.layout.grid, cell, call.layout.target)
        return _Call(call, layout, heatmap.block_range(call.n_blocks, *self.blocks), total)

    def attention(self, run: Run, state: _Call, a: AttentionCall):
        if a.block not in state.blocks:
            return None
        if state.layout is None:
            raise MethodError("entities", f"the positive prompt the sampler sees is not the one the words came from "
                              f"({self.words.length} rows).", ENCODE_FIX)
        rows = list(state.call.rows)
        if a.kind == "main":  # in the call's own order: nothing reordered
            q, k, v, given, layout = a.model_order(state.layout)
            mask = deleaker.attention_mask_4d(given, rows)
        else:  # a UNet's cross-attention: the keys are the context's rows
            q, k, v, given = a.q, a.k, a.v, a.mask
            if a.grid not in state.cross:
                state.cross[a.grid] = cross_layout(a.grid, state.layout.entities)
            layout = state.cross[a.grid]
            mask = heatmap.cross_attention_mask(given, q.shape[2])
            if mask is not None and mask.shape[0] > 1:
                mask = mask[rows]
        qp, kp = deleaker.batch_rows(q, rows), deleaker.batch_rows(k, rows)
        if a.fused_is_model:  # the model's own output, bit for bit, and its lse with it
            out, lse = a.fused_call(model_order=True)
            state.total.add(deleaker.scores_from_lse(qp, kp, deleaker.batch_rows(lse, rows), layout, mask),
                            layout.grid)
            a.output_in_model_order = True
            return out
        state.total.add(deleaker.entity_scores(qp, kp, layout, mask, v=deleaker.batch_rows(v, rows)), layout.grid)
        return None  # the heatmap only reads: the call is the model's own

    def finish(self, run: Run, output) -> HeatmapResult | None:
        found = next(((e, s) for e, s in run.sums.items() if s.count), None)  # the first positive entries
        if found is None:
            return None
        entries, total = found
        return HeatmapResult(total.mean.cpu(), self.words.names, run.windows[entries], run.cells[entries])
