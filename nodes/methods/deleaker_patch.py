"""DeLeaker as a patch: the per-run controller over the contract (pure: no ComfyUI import).

In each main attention call of the mask-history window it scores the image rows' attention to each entity on the
rows of its prompt and keeps their running mean; from the first step's intervention block on it makes masks (from
the history, frozen after its window) and edits those rows (deleaker.deleaker_attention). The scores come from
the row log-sum-exp of the call's fused attention where the driver found that kernel to be the model's own
(AttentionCall.fused_is_model: one fused call on the whole call gives the model's output, returned as it is in
the read-only blocks and corrected in the edited rows only, and every row's lse); elsewhere from a separate exact
pass (deleaker.entity_scores), the rows left alone then running the model's attention. Steps come from the sigma
schedule; blocks are counted per model call. Each set of positive entries (by conditioning uuid) has its own
history, so model calls on other rows (0.33.0's multi-GPU CFG split runs cond and uncond in threads at once) never
share one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from . import deleaker
from .contract import AttentionCall, MethodError, ModelCall
from .phrases import Phrases
from .settings import Setting

REFERENCE_BLOCKS = 57  # FLUX.1: 19 double + 38 single blocks, the model the reference's windows are written for
REFERENCE_HISTORY_START = 12  # the history starts at block 12 of the first step ...
REFERENCE_INTERVENE_START = 18  # ... and the edits at block 18 (FLUX.1's last double block) of the first step
OPACITY = Setting("opacity", "float", 0.45, "Overlay colour strength (default {default}); 0 shows the images "
                  "unchanged.", 0.0, 1.0, 0.05)  # DeLeaker Masks
ENCODE_FIX = ("connect Leakless DeLeaker Encode's conditioning (FluxGuidance, timestep-range, area and mask nodes in "
              "between are fine) as the positive prompt of the sampler that uses this model.")


@dataclass(frozen=True)
class Schedule:
    """DeLeaker's windows over one sampling run's block-steps (step * n_blocks + block), as fractions of the
    reference's (FLUX.1, 57 blocks, 20 steps): the mask history from block 12 of the first step to the end of the
    history steps (12 of 20), the edits from block 18 of the first step (FLUX.1 and Chroma: their last double
    block) to the end."""

    n_blocks: int
    steps: int
    history_start: int
    history_end: int
    intervene_start: int

    @classmethod
    def of(cls, model, n_blocks: int, n_first: int, steps: int, history: float) -> Schedule:
        start = round(REFERENCE_HISTORY_START / REFERENCE_BLOCKS * n_blocks)
        intervene = n_first - 1 if model.edits_from_last_double else \
            round(REFERENCE_INTERVENE_START / REFERENCE_BLOCKS * n_blocks)
        return cls(n_blocks, steps, start, round(history * steps) * n_blocks, intervene)

    def block_step(self, step: int, block: int) -> int:
        return step * self.n_blocks + block

    def in_history(self, b: int) -> bool:
        return self.history_start <= b < self.history_end

    def intervenes(self, b: int) -> bool:
        return b >= self.intervene_start

    def history_steps(self) -> int:
        return self.history_end // self.n_blocks


class Track:
    """The mask history and masks of one set of positive entries in one sampling run."""

    def __init__(self):
        self.history = deleaker.MaskHistory()
        self.masks = None  # masks in use: [rows, K, N] bool
        self.plans = None  # their MaskPlans, one per row
        self.layout = None  # the layout those masks belong to
        self.masks_key = None  # the history state they were made from


class Run:
    """One sampling run: one track per set of positive entries."""

    def __init__(self, progress=None):
        self.tracks: dict[tuple, Track] = {}
        self.lock = threading.Lock()
        self.progress = progress  # progress(total) -> a bar over the mask history window's steps
        self.history_bar = None

    def track(self, entries: tuple) -> Track:
        with self.lock:
            return self.tracks.setdefault(entries, Track())

    def history_progress(self, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self.history_bar is None:
            self.history_bar = self.progress(total)
        self.history_bar.update_absolute(done, total)


@dataclass
class _Call:
    """DeLeaker's view of one model call."""

    call: ModelCall
    layout: object  # Layout with the entities placed; None: the positive prompt is not the entities'
    schedule: Schedule | None
    track: Track


@dataclass(frozen=True)
class MaskResult:
    """The masks of one completed sampling run."""

    masks: torch.Tensor  # [cond rows, K, N] bool, on the CPU
    grid: tuple[int, int]  # the image token grid (h, w)
    names: tuple[str, ...]
    window: tuple[int, int, int, int]  # the latent's own part of the grid (top, left, height, width)
    cell: tuple[int, int]  # latent pixels per grid cell (the patch size)

    @property
    def missing(self) -> list[str]:
        """The entities no image token was assigned to in any image of the run."""
        found = self.masks.any(dim=-1).any(dim=0).tolist()
        return [name for name, hit in zip(self.names, found, strict=False) if not hit]

    def summary(self) -> str:
        """What the user is told about the masks ('' when every entity was found)."""
        missing = self.missing
        if not missing:
            return ""
        if len(missing) == len(self.names):
            return ("Leakless DeLeaker found none of the entities in the image (every mask is empty), so it changed "
                    "nothing in this sampling. Lower mask_threshold (e.g. 0.5), or check that the entities are what "
                    "the image shows.")
        return (f"Leakless DeLeaker found no image region for {', '.join(repr(n) for n in missing)} (empty mask), so "
                "those entities were not separated. Lower mask_threshold to find them.")


class DeLeakerPatch:
    edits = True

    def __init__(self, entities: Phrases, settings: deleaker.Settings, history: float):
        self.entities, self.settings, self.history = entities, settings, history

    def new_run(self, info: dict) -> Run:
        return Run(info.get("progress"))

    def begin(self, run: Run, call: ModelCall) -> _Call | None:
        if not call.rows:
            return None
        layout = call.layout.with_phrases(self.entities.streams(), call.model.left_padded)
        schedule = Schedule.of(call.model, call.n_blocks, call.n_first, call.steps, self.history) \
            if call.steps else None
        if schedule is not None and call.step < schedule.history_steps():  # the history window, step by step
            run.history_progress(call.step + 1, schedule.history_steps())
        return _Call(call, layout, schedule, run.track(call.entries))

    def attention(self, run: Run, state: _Call, a: AttentionCall):
        settings, rows, layout = self.settings, list(state.call.rows), state.layout
        if layout is None:
            rows_seen = next(s.rows for s in state.call.layout.segments if s.stream == "prompt")
            raise MethodError("entities", f"the positive prompt the sampler sees has {rows_seen} rows, but the "
                              f"entities came from a prompt of {self.entities.length}.", ENCODE_FIX)
        step, _ = state.call.need_step()
        schedule, track = state.schedule, state.track
        b = schedule.block_step(step, a.block)
        in_history, intervene = schedule.in_history(b), schedule.intervenes(b)
        if not (in_history or intervene):
            return None
        q, k, v, mask, call_layout = a.model_order(layout)  # the call's own order: nothing reordered
        history = track.history
        if b == schedule.history_start:
            history.reset()
        if history.mean is not None and history.mean.device != q.device:  # the multi-GPU split moved these rows
            history.mean, track.masks_key = history.mean.to(q.device), None
        need_scores = in_history or history.mean is None or b <= schedule.history_start
        if need_scores:
            prompt_mask = deleaker.attention_mask_4d(mask, rows)
            qp, kp = deleaker.batch_rows(q, rows), deleaker.batch_rows(k, rows)
        whole = scores = None
        if a.fused_is_model:  # the call's own fused attention: its output is the model's, its lse free
            whole = a.fused_call(model_order=True)
            if need_scores:
                scores = deleaker.scores_from_lse(qp, kp, deleaker.batch_rows(whole[1], rows), call_layout, prompt_mask)
        elif need_scores:  # another backend: the model's output (or the edit's), and a pass of its own
            scores = deleaker.entity_scores(qp, kp, call_layout, prompt_mask, v=deleaker.batch_rows(v, rows))
        if in_history:
            history.update(scores)
        if not intervene:  # the history window before the edits: read only
            a.output_in_model_order = whole is not None
            return None if whole is None else whole[0]
        from_history = history.mean is not None and b > schedule.history_start
        masks_key = (history.epoch, history.count, layout) if from_history else None
        if masks_key is None or masks_key != track.masks_key:  # a frozen history gives the same masks: plan once
            masks = deleaker.entity_masks(history.mean if from_history else scores, layout, settings)
            same = track.masks is not None and track.layout == layout and track.masks.shape == masks.shape and \
                bool(torch.equal(track.masks, masks))
            if not same:  # in the history window the masks settle: their plans are kept while they do not change
                track.plans = [deleaker.MaskPlan(m, settings) for m in masks]
            track.masks, track.layout, track.masks_key = masks, layout, masks_key
        a.output_in_model_order = True
        return deleaker.deleaker_attention(q, k, v, a.attend, track.plans, call_layout, settings, rows, mask, whole)

    def finish(self, run: Run, output) -> MaskResult | None:
        track = next((t for t in run.tracks.values() if t.masks is not None), None)  # the first positive entries
        if track is None:
            return None
        layout = track.layout
        result = MaskResult(track.masks.cpu(), layout.grid, self.entities.names, layout.target, layout.cell)
        if result.summary():
            logging.warning("%s", result.summary())  # shown in ComfyUI's log; DeLeaker Masks shows it too
        return result
