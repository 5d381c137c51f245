"""Results of completed sampling runs of a patched model, each tied to the latent the run produced and the prompt
execution it ran in, so a node that shows them (DeLeaker Masks, Heatmap Show) never shows another run's
(ComfyUI glue; imports ComfyUI inside functions only). Written once at the end of each run; the sampling itself never
reads them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import LeaklessInputError


@dataclass(frozen=True)
class Record:
    """One completed run: what its patch made of it (`value`), and what ties it to the run."""

    value: object  # the patch's result (MaskResult, HeatmapResult)
    latent: tuple[int, ...]  # the shape of the latent the run produced
    fingerprint: str  # a digest of that latent
    prompt: str | None  # the prompt execution the run belonged to (None outside one)
    notes: tuple[str, ...] = ()  # what the user was told during the run (layouts left alone)
    scale: int = 8  # image pixels per latent pixel (the VAE's)


def fingerprint(latent: torch.Tensor) -> str:
    """A digest of a latent, equal for the sampler's float32 output and the LATENT it hands on (float32 or, with
    --fp16-intermediates, float16), on any device."""
    x = latent.detach().to("cpu", torch.float16).contiguous()
    return hashlib.blake2b(x.numpy().tobytes() + repr(tuple(x.shape)).encode(), digest_size=16).hexdigest()


def prompt_id() -> str | None:
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    return None if context is None else context.prompt_id


class RunResults:
    """The Records of the last KEEP completed runs of one patched model. `patch`: the node whose model made them,
    `what`: what they are, for the errors."""

    KEEP = 16

    def __init__(self, patch: str, what: str):
        self.patch, self.what = patch, what
        self.runs: list[Record] = []

    def add(self, record: Record) -> None:
        self.runs = [*self.runs, record][-self.KEEP:]  # a new list: a reader never sees it half-changed

    @property
    def last(self):
        return self.runs[-1] if self.runs else None

    def find(self, node: str, samples: dict | None):
        """The run whose output is `samples` (a LATENT), or without it the one run of this prompt execution."""
        runs, patch = self.runs, self.patch
        if samples is not None:
            found = [r for r in runs if r.fingerprint == fingerprint(samples["samples"])]
            if not found:
                raise LeaklessInputError(node, "samples", f"these latents were not made by a sampler that uses this "
                                         f"{patch} model (or were changed after sampling, or come from a run older "
                                         f"than its last {self.KEEP}).", "connect the LATENT output of the sampler "
                                         f"that uses {patch}'s model.")
            return found[-1]
        prompt = prompt_id()
        found = [r for r in runs if r.prompt == prompt]
        if len(found) != 1:
            problem = (f"{len(found)} samplings used this {patch} model in this run of the workflow, so which one "
                       "made these images is not known." if found else
                       f"no sampling with this {patch} model ran in this run of the workflow (the sampler's result "
                       f"was reused from an earlier run, or it has not run), so its {self.what} are not known.")
            raise LeaklessInputError(node, "samples", problem, "connect the LATENT output of the sampler whose "
                                     f"images these are to 'samples': the {self.what} of the run that made it are "
                                     "then shown, even when its result is reused.")
        return found[0]


def check_images(node: str, images: torch.Tensor, record: Record, patch: str) -> tuple[int, int, int]:
    """(count, height, width) of `images`, which must be the decoded images of the run of `record`: one per latent,
    each the latent's size times the VAE's scale."""
    n, ih, iw, _ = images.shape
    lh, lw = record.latent[-2:]
    if n != record.latent[0] or (ih, iw) != (lh * record.scale, lw * record.scale):
        raise LeaklessInputError(node, "images", f"{n} image(s) of {iw}x{ih} px do not match the sampling they "
                                 f"belong to ({record.latent[0]} latent(s) of {lw}x{lh}, decoded to "
                                 f"{lw * record.scale}x{lh * record.scale} px).", "connect the decoded images of the "
                                 f"sampler that uses {patch}'s model (VAE Decode of its LATENT, not resized).")
    return n, ih, iw
