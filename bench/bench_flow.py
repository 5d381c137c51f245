"""Token tracing cost: N traced subsets in one batched sampling run vs N single-image runs, and the encoder work
Token Trace adds (one empty-prompt pass, cached for later runs).

    .cache/venv/bin/python bench/bench_flow.py        (also part of `make bench`)

CPU; a mid-size random-weight FLUX-shaped model built in memory with ComfyUI's classes (hidden 512, 2 double +
2 single blocks, 4 heads) at 256x256 px, 4 Euler steps, cfg 1; tiny text encoders with real tokenizers.
Writes bench/results/flow.md.
"""

import platform

from common import REPO, flux_setup, median_time


def main():
    nodes, patcher, clip = flux_setup(hidden=512, heads=4, depth=2, single=2)
    import comfy.sample
    import torch

    trace = nodes.NODE_CLASS_MAPPINGS["LeaklessTokenTrace"]
    text = "a cow and a horse in a farm"

    calls = {"n": 0}
    encode = clip.encode_from_tokens_scheduled

    def counting(*a, **k):
        calls["n"] += 1
        return encode(*a, **k)

    clip.encode_from_tokens_scheduled = counting  # bench-only instrumentation of this CLIP instance

    def run_trace():
        return trace.execute(clip=clip, text=text, mode="each word", selection="", include_full_prompt=False,
                             pooled_output="reference").args

    calls["n"] = 0
    t_cold = median_time(run_trace, 1)
    cold_calls = calls["n"]
    calls["n"] = 0
    t_warm = median_time(run_trace)
    warm_calls = calls["n"] / 3
    t_plain = median_time(lambda: nodes.CLIPTextEncode().encode(clip, text))
    cond, labels, n = run_trace()

    latent = torch.zeros(n, 16, 32, 32)
    noise = comfy.sample.prepare_noise(latent, 42)

    def sample(positive, lat, nz):
        return comfy.sample.sample(patcher, nz, 4, 1.0, "euler", "simple", positive, positive, lat,
                                   disable_pbar=True)

    sample(cond, latent, noise)  # warm-up (model load)
    t_batched = median_time(lambda: sample(cond, latent, noise))

    def singles():
        for i in range(n):
            one = [[c[i:i + 1], {**m, "pooled_output": m["pooled_output"][i:i + 1]}] for c, m in cond]
            sample(one, latent[i:i + 1], noise[i:i + 1])

    t_single_total = median_time(singles)
    lines = [
        "# Token tracing (Follow the Flow)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, CPU, 2 "
        "threads; median of 3 runs. Reproduce: `make bench`.",
        f"Model: FLUX-shaped, random weights, hidden 512, 2+2 blocks, 256x256 px, 4 Euler steps; prompt "
        f"'{text}', mode 'each word' = {n} subsets.",
        "",
        "| what | time | encoder passes |",
        "|---|---:|---:|",
        f"| CLIPTextEncode (reference) | {t_plain * 1e3:.1f} ms | 1 |",
        f"| Token Trace, first run (prompt + empty prompt) | {t_cold * 1e3:.1f} ms | {cold_calls} |",
        f"| Token Trace, later runs (empty prompt cached) | {t_warm * 1e3:.1f} ms | {warm_calls:.0f} |",
        f"| sampling {n} subsets in one batched run | {t_batched:.2f} s | |",
        f"| sampling {n} subsets one at a time | {t_single_total:.2f} s | |",
        f"| batched / (N x single) | {t_batched / t_single_total:.2f} | |",
    ]
    out = REPO / "bench" / "results" / "flow.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
