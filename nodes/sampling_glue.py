"""Where a model call is in the sampling: its step, from the sigma schedule (never by counting calls), and which
batch rows are the cond rows."""

from __future__ import annotations


def sigma_step(transformer_options, node: str) -> tuple[int, int]:
    """(step index, number of steps) of this call: the largest i with sample_sigmas[i] >= sigma, so samplers that
    evaluate between schedule sigmas (DPM, SDE, churn) still map to the step they are in."""
    sample_sigmas = transformer_options.get("sample_sigmas")
    sigmas = transformer_options.get("sigmas")
    if sample_sigmas is None or sigmas is None:
        raise RuntimeError(f"{node} needs the sampler's sigma schedule (KSampler, KSamplerAdvanced or "
                           "SamplerCustomAdvanced provide it)")
    sigma = float(sigmas.flatten()[0])
    schedule = sample_sigmas.flatten().float().cpu()
    at_or_above = (schedule >= sigma * (1 - 1e-4) - 1e-8).nonzero()
    index = int(at_or_above.max()) if at_or_above.numel() else 0
    return min(index, len(schedule) - 2), len(schedule) - 1


def cond_rows(transformer_options, batch: int, uuids=None) -> list[int]:
    """Batch rows of the cond chunks (cond_or_uncond flag 0) of a model call with `batch` rows; with `uuids`, of
    the chunks whose conditioning entry's uuid is in it instead (ComfyUI's transformer_options["uuids"])."""
    flags = transformer_options.get("cond_or_uncond") or [0]
    per = batch // len(flags)
    if uuids is not None:
        chunks = transformer_options.get("uuids") or []
        return [c * per + i for c, u in enumerate(chunks) if u in uuids for i in range(per)]
    return [c * per + i for c, flag in enumerate(flags) if flag == 0 for i in range(per)]
