"""DeLeaker cost: sampling time and peak memory, patched / unpatched, and the dense reference / unpatched.

    .cache/venv/bin/python bench/bench_deleaker.py        (also part of `make bench`)

CPU: a mid-size random-weight FLUX-shaped model built in memory with ComfyUI's classes (hidden 512, 4 heads of 128,
2 double + 4 single blocks), 512x512 px (1024 image + 256 text tokens), 4 Euler steps, batch 1, cfg 1. Each
configuration runs in its own process; peak memory is the resident high-water mark during its first sampling.
"dense" is the reference algorithm written with full B x H x L x L matrices and a full-matrix history, as the
paper's code does it.
Writes bench/results/deleaker.md.

    python bench/bench_deleaker.py --gpu           (a CUDA GPU; --gpu --smoke checks the code on a CPU)

GPU: FLUX.1's transformer dimensions (19 + 38 blocks, hidden 3072, 24 heads), random weights, bf16, 512² and 1024²,
10 steps; writes bench/results/deleaker_gpu.md.
"""

import json
import platform
import statistics
import sys
import time
from functools import partial

from common import REPO, flux_setup, peak_rss_during, run_each_in_own_process

# name -> (mask threshold beta1, image-image edit on). A random-weight model attends without spatial coherence:
# beta1 = 1 (the paper's) leaves only speckle that the 3x3 opening removes, so lower thresholds stand in for the
# object-sized masks of a trained FLUX: -1 covers about 80% of the image per entity (heavy overlap, the worst case
# for cost), -0.5 about a quarter.
CONFIGS = {
    "unpatched": (-1.0, True),
    "all edits": (-1.0, True),
    "no image-image": (-1.0, False),
    "all edits, smaller masks": (-0.5, True),
    "no image-image, smaller masks": (-0.5, False),
    "dense reference": (-1.0, True),
}
SIZE, STEPS, ROUNDS = 512, 4, 15
# --gpu: FLUX.1's transformer (random weights), the history over 6 of 10 steps as in the reference's 12 of 20
FLUX1_DIMS = dict(hidden=3072, heads=24, depth=19, single=38)
GPU_SIZES, GPU_STEPS, GPU_ROUNDS = (512, 1024), 10, 3
GPU_EXTRA = {"no image-image, chunked scores": (-1.0, False)}  # the mask-history scores as the CPU computes them


def dense_override(nodes_module, settings):
    """The reference processor's algorithm with full matrices (history = running mean of the full P). It replaces
    DeLeaker's override, reading the model call DeLeaker's wrapper describes."""
    import math

    import torch

    state = {"hist": None, "n": 0}

    def override(func, q, k, v, heads, **kwargs):
        to = kwargs["transformer_options"]
        call = next(c for c in to.values() if isinstance(c, nodes_module._Call))
        call.model_call.ran = True
        layout, n_layers = call.layout, call.model_call.n_blocks
        layer = to["block_index"] + (0 if to["block_type"] == "double" else call.model_call.n_first)
        sig = float(to["sigmas"][0])
        sched = to["sample_sigmas"].float()
        step = int((sched >= sig * (1 - 1e-4)).nonzero().max())
        b = step * n_layers + layer
        s = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        p = s.softmax(-1)
        if b == 0:
            state["hist"], state["n"] = p.clone(), 1
        elif b < round(0.6 * (len(sched) - 1)) * n_layers:
            n = state["n"]
            state["hist"] = state["hist"] * (n / (n + 1)) + p / (n + 1)
            state["n"] = n + 1
        img = layout.img
        scores = torch.stack([state["hist"][:, :, img][..., list(t)].mean(-1).mean(1) for t in layout.entities], 1)
        masks = nodes_module.deleaker.entity_masks(scores, layout, settings)
        for i, j in [(0, 1)]:
            for rows, cols in ((masks[:, i], layout.entities[j]), (masks[:, j], layout.entities[i])):
                blk = s[:, :, img][..., list(cols)]
                blk[rows[:, None].expand_as(blk[..., 0])] = float("-inf")
                sub = s[:, :, img]
                sub[..., list(cols)] = blk
                s[:, :, img] = sub
            im_im = p[:, :, img, img].mean(1)
            for rows, cols in ((masks[:, i], masks[:, j]), (masks[:, j], masks[:, i])):
                w = im_im * (rows[:, :, None] & cols[:, None, :])
                nz = w[w != 0]
                if nz.numel():
                    thr = nz.mean() + nz.std()
                    sub = s[:, :, img, img]
                    sub[(w > thr)[:, None].expand_as(sub)] = float("-inf")
                    s[:, :, img, img] = sub
        out = s.softmax(-1) @ v.float()
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1).to(q.dtype)

    return override


PROMPT = "A **cow** and a **horse** in a farm"


def patched(m, patcher, spec, config):
    """(the model one configuration samples with, its DeLeaker masks output or None)."""
    if config == "unpatched":
        return patcher, None
    beta1, image_image = CONFIGS.get(config, GPU_EXTRA.get(config))
    settings = dict(mask_threshold=beta1, image_threshold=1.0, alpha=1.2, mask_history=0.6, cross_text=True,
                    self_text=True, image_image=image_image, alpha_per_pair=False, overlap="reference")
    used, results = m["LeaklessDeLeaker"].execute(model=patcher, entities=spec, **settings).args
    if config == "dense reference":
        module = sys.modules[type(results).__module__]
        dense = dense_override(module, module.deleaker.Settings(beta_text=beta1, image_image=image_image))
        used.model_options["transformer_options"]["optimized_attention_override"] = dense
    return used, results


def sampler(cond, size, steps):
    """go(model): one euler sampling of a size x size latent at cfg 1 (the FLUX-dev way), fixed noise."""
    import comfy.sample
    import torch

    latent = torch.zeros(1, 16, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, 1)

    def go(model):
        return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond, latent,
                                   disable_pbar=True)

    return go


def coverage(config, results) -> float | None:
    """The share of image tokens in each entity's mask in the last run (none for the unpatched model and the dense
    reference)."""
    if results is None or results.last is None or config == "dense reference":
        return None
    return float(results.last.value.masks.float().mean())


def run_config(config):
    nodes, patcher, clip = flux_setup(hidden=512, heads=4, depth=2, single=4)
    m = nodes.NODE_CLASS_MAPPINGS
    cond, spec = m["LeaklessDeLeakerEncode"].execute(clip=clip, text=PROMPT, entities="").args
    used, run = patched(m, patcher, spec, config)
    go = sampler(cond, SIZE, STEPS)
    peak_mb, working_mb = peak_rss_during(lambda: go(used))  # also the warm-up
    go(patcher)

    def timed(model):
        t = time.perf_counter()
        go(model)
        return time.perf_counter() - t

    ratios, times, plains = [], [], []
    for r in range(ROUNDS):  # each round times both models back to back, in alternating order
        if r % 2:
            times.append(timed(used))
            plains.append(timed(patcher))
        else:
            plains.append(timed(patcher))
            times.append(timed(used))
        ratios.append(times[-1] / plains[-1])
    print(json.dumps({"config": config, "seconds": statistics.median(times), "ratio": statistics.median(ratios),
                      "spread": [min(ratios), max(ratios)], "best_ratio": min(times) / min(plains),
                      "peak_mb": peak_mb, "working_mb": working_mb,
                      "coverage": coverage(config, run)}))


def run_gpu(smoke: bool):
    """FLUX.1 dimensions on a CUDA GPU, bf16, every configuration in one process (GPU peaks are per sampling:
    torch's allocator statistics). --smoke runs the same code on the CPU at small dimensions and writes nothing."""
    import torch

    if not smoke and not torch.cuda.is_available():
        raise SystemExit("bench_deleaker.py --gpu needs a CUDA GPU (use --gpu --smoke to check the code on a CPU)")
    device = "cpu" if smoke else "cuda"
    dims = dict(hidden=256, heads=2, depth=2, single=2) if smoke else FLUX1_DIMS
    sizes, steps, rounds = ((256,), 2, 1) if smoke else (GPU_SIZES, GPU_STEPS, GPU_ROUNDS)
    nodes, patcher, clip = flux_setup(**dims, device=device)
    m = nodes.NODE_CLASS_MAPPINGS
    cond, spec = m["LeaklessDeLeakerEncode"].execute(clip=clip, text=PROMPT, entities="").args
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def measure(go, model):
        """(median seconds, peak MB during the first timed sampling, that peak minus what was allocated before)."""
        go(model)  # warm-up (loads the model, compiles nothing)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        times = []
        for _ in range(rounds):
            sync()
            t = time.perf_counter()
            go(model)
            sync()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
        return statistics.median(times), peak / 2 ** 20, (peak - before) / 2 ** 20 if device == "cuda" else 0

    results = {}
    for size in sizes:
        go = sampler(cond, size, steps)
        for config in (*CONFIGS, *GPU_EXTRA):
            used, run = patched(m, patcher, spec, config)
            dl = sys.modules[type(run).__module__].deleaker if run is not None else None
            own_scores = dl and dl.entity_scores
            if config in GPU_EXTRA:  # the CPU's way of computing the mask-history scores
                dl.entity_scores = partial(own_scores, fused=False)
            try:
                seconds, peak, added = measure(go, used)
            finally:
                if dl:
                    dl.entity_scores = own_scores
            results[size, config] = dict(seconds=seconds, peak=peak, added=added, coverage=coverage(config, run))
            print(size, config, results[size, config], flush=True)
    if smoke:
        return
    lines = ["# DeLeaker (FLUX) on a GPU at FLUX.1 dimensions", "",
             f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16. Model: FLUX-shaped, random "
             f"weights, {FLUX1_DIMS['depth']} double + {FLUX1_DIMS['single']} single blocks, hidden "
             f"{FLUX1_DIMS['hidden']}, {FLUX1_DIMS['heads']} heads (the tiny T5's 64-wide context and vector "
             f"inputs; attention and blocks at full size). {GPU_STEPS} Euler steps, cfg 1, batch 1, entities cow "
             f"and horse; ComfyUI's own attention. Sampling time = median of {GPU_ROUNDS} timed runs after a "
             "warm-up; peak memory = torch's peak allocation during them (weights included); 'added' = that peak "
             "minus what was allocated before. Reproduce: `python bench/bench_deleaker.py --gpu`.", ""]
    for size in sizes:
        base = results[size, "unpatched"]
        lines += [f"## {size}x{size} px ({(size // 16) ** 2} image tokens)", "",
                  "| configuration | sampling time | x unpatched | peak memory | x unpatched | added by sampling "
                  "| x unpatched | image tokens in a mask |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for (s, config), r in results.items():
            if s == size:
                lines.append(f"| {config} | {r['seconds']:.2f} s | {r['seconds'] / base['seconds']:.2f} | "
                             f"{r['peak']:.0f} MB | {r['peak'] / base['peak']:.3f} | {r['added']:.0f} MB | "
                             f"{r['added'] / base['added']:.2f} | {_coverage(r)} |")
        lines.append("")
    out = REPO / "bench" / "results" / "deleaker_gpu.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def _coverage(result) -> str:
    return "" if result["coverage"] is None else f"{result['coverage'] * 100:.0f}% per entity"


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--config":
        return run_config(sys.argv[2])
    if "--gpu" in sys.argv:
        return run_gpu(smoke="--smoke" in sys.argv)
    import torch

    results = run_each_in_own_process(__file__, CONFIGS)
    base = results["unpatched"]
    lines = [
        "# DeLeaker (FLUX)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, CPU, 2 "
        f"threads. Each configuration's process times {ROUNDS} rounds after a warm-up, each round sampling with the "
        "unpatched and the patched model back to back (alternating which goes first); sampling time = the median "
        "patched run, 'x unpatched' = the median of the per-round ratios, with their range (this VM's timing noise "
        "is large; the 'unpatched' row compares the model with itself); 'best' = the fastest patched run over the "
        "fastest unpatched run (the least disturbed pair, as timeit reports it); peak "
        "memory = the process's resident high-water mark during the configuration's first sampling (model and encoders "
        "included; 'added by sampling' = that peak minus the memory resident before it). Reproduce: `make bench`.",
        f"Model: FLUX-shaped, random weights, hidden 512, 4 heads x 128, 2 double + 4 single blocks; {SIZE}x{SIZE} "
        f"px (1024 image + 256 text tokens), {STEPS} Euler steps, entities cow, horse.",
        "",
        "| configuration | mask threshold | sampling time | x unpatched | (range) | best | peak memory "
        "| x unpatched | added by sampling | image tokens in a mask |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in CONFIGS:
        r = results[config]
        beta1 = "" if config == "unpatched" else f"{CONFIGS[config][0]:g}"
        lo, hi = r["spread"]
        lines.append(f"| {config} | {beta1} | {r['seconds']:.2f} s | {r['ratio']:.2f} | {lo:.2f}–{hi:.2f} | "
                     f"{r['best_ratio']:.2f} | "
                     f"{r['peak_mb']:.0f} MB | {r['peak_mb'] / base['peak_mb']:.2f} | {r['working_mb']:.0f} MB | "
                     f"{_coverage(r)} |")
    lines += ["", "GPU at FLUX.1 dimensions (19+38 blocks, 3072 hidden, 24 heads, 1024² and 512²): "
              "`python bench/bench_deleaker.py --gpu` writes `deleaker_gpu.md`; not run yet, no GPU machine was lent "
              "to this task."]
    out = REPO / "bench" / "results" / "deleaker.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
