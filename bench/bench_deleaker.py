"""DeLeaker and the attention heatmap over a whole sampling: time and peak memory, patched / unpatched.

    .cache/venv/bin/python bench/bench_deleaker.py              (also part of `make bench`; ~50 min on 2 cores)
    .cache/venv/bin/python bench/bench_deleaker.py --quick      (one round, one backend: a smoke run, writes nothing)

CPU: a random-weight FLUX-shaped model built in memory with ComfyUI's classes at FLUX.1's width (hidden 3072, 24
heads of 128: its attention share at 512² is FLUX.1's), 1 double + 2 single blocks, 512x512 px (1024 image + 256
text tokens), 4 Euler steps, batch 1, cfg 1, fp32, 2 threads. Two attention backends, each in a process of its own
(glibc's mmap threshold fixed, so freed tensors leave the resident set): ComfyUI's PyTorch (SDPA) attention as a
chained override (ComfyUI's default on NVIDIA: the driver finds the fused kernel to be the model's attention, the
fast path) and ComfyUI's CPU default (sub-quadratic attention: the patches' separate passes). Configurations:
unpatched; DeLeaker's mask-history window alone (mask_history 1.0 and the edits held off: what reading the scores
costs); the heatmap over every step and block; DeLeaker without the image-image edit; DeLeaker with every edit
(mask threshold -0.5: about a quarter of the image per entity on this random model). Each round samples every
configuration once (order rotated round to round); x unpatched = median of the per-round ratios to that round's
unpatched sampling, with the quartiles; peak memory = the resident high-water mark during each configuration's
first sampling (weights included). Writes bench/results/deleaker.md.

    python bench/bench_deleaker.py --gpu           (a CUDA GPU; --gpu --smoke checks the code on a CPU)

GPU: FLUX.1's transformer dimensions (19 + 38 blocks, hidden 3072, 24 heads), random weights, bf16, 512² and 1024²,
10 steps; writes bench/results/deleaker_gpu.md.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from common import REPO, flux_setup, peak_rss_during

PROMPT = "A **cow** and a **horse** in a farm"
SIZE, STEPS, ROUNDS = 512, 4, 8
REALISTIC = dict(hidden=3072, heads=24, depth=1, single=2)
BACKENDS = {"sdpa": "ComfyUI's PyTorch (SDPA) attention (its NVIDIA default)",
            "comfy-cpu-default": "ComfyUI's CPU default (sub-quadratic attention)"}
MASK_THRESHOLD = -0.5
CONFIGS = ("unpatched", "mask-history window", "heatmap", "no image-image", "all edits")
TARGETS = {"mask-history window": 1.05, "heatmap": 1.05, "no image-image": 1.05, "all edits": 1.10}
# --gpu: FLUX.1's transformer (random weights), the history over 6 of 10 steps as in the reference's 12 of 20
FLUX1_DIMS = dict(hidden=3072, heads=24, depth=19, single=38)
GPU_SIZES, GPU_STEPS, GPU_ROUNDS = (512, 1024), 10, 3
GPU_EXTRA = {"all edits, another backend": (MASK_THRESHOLD, True)}  # the fused kernel not the model's


def sdpa_attention(func, *args, **kwargs):
    """A chained attention override that runs ComfyUI's own PyTorch (SDPA) attention."""
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def deleaker_model(m, patcher, spec, beta1, image_image, history=0.6):
    settings = dict(mask_threshold=beta1, image_threshold=1.0, alpha=1.2, mask_history=history, cross_text=True,
                    self_text=True, image_image=image_image, alpha_per_pair=False, overlap="reference")
    return m["LeaklessDeLeaker"].execute(model=patcher, entities=spec, **settings).args


def installed_patch(model):
    return model.model_options["transformer_options"]["optimized_attention_override"].installed.patch


def history_only(model):
    """The DeLeaker on `model` with its edits held off: it reads the mask history over its window, nothing else."""
    patch = installed_patch(model)
    begin = patch.begin

    def held_off(run, call):
        state = begin(run, call)
        if state is not None and state.schedule is not None:
            state.schedule = replace(state.schedule, intervene_start=1 << 30)
        return state

    patch.begin = held_off
    return model


def configurations(nodes, base, clip):
    """{configuration: (model, its results store)} over `base`."""
    m = nodes.NODE_CLASS_MAPPINGS
    cond, spec = m["LeaklessDeLeakerEncode"].execute(clip=clip, text=PROMPT, entities="").args
    words_cond, words = m["LeaklessHeatmapEncode"].execute(clip=clip, text=PROMPT, words="").args
    window = dict(start_percent=0.0, end_percent=1.0, first_block=0.0, last_block=1.0)
    history_model, history_results = deleaker_model(m, base, spec, MASK_THRESHOLD, True, history=1.0)
    return cond, words_cond, {
        "unpatched": (base, None),
        "mask-history window": (history_only(history_model), history_results),
        "heatmap": m["LeaklessAttentionHeatmap"].execute(model=base, entities=words, **window).args,
        "no image-image": deleaker_model(m, base, spec, MASK_THRESHOLD, False),
        "all edits": deleaker_model(m, base, spec, MASK_THRESHOLD, True),
    }


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


def attention_share(go, model):
    """The share of one sampling's time spent in its attention calls (timed inside the attention override: the
    backend it chains, or ComfyUI's own attention)."""
    previous = (model.model_options.get("transformer_options") or {}).get("optimized_attention_override")
    spent = [0.0]

    def timed(func, *args, **kwargs):
        t = time.perf_counter()
        out = previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
        spent[0] += time.perf_counter() - t
        return out

    clone = model.clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = timed
    t = time.perf_counter()
    go(clone)
    return spent[0] / (time.perf_counter() - t)


def run_backend(backend: str, rounds: int):
    """Every configuration on one backend, in this process; prints one JSON line."""
    import torch

    nodes, patcher, clip = flux_setup(**REALISTIC)
    base = patcher
    if backend == "sdpa":
        base = patcher.clone()
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sdpa_attention
    cond, words_cond, configs = configurations(nodes, base, clip)
    go = {name: sampler(words_cond if name == "heatmap" else cond, SIZE, STEPS) for name in configs}
    outputs, peaks = {}, {}
    for name, (model, _) in configs.items():  # the first sampling of each: warm-up and peak memory
        peak, added = peak_rss_during(lambda name=name, model=model: outputs.__setitem__(name, go[name](model)))
        peaks[name] = dict(peak=peak, added=added)
        print(backend, name, "first sampling done", flush=True)
    share = attention_share(go["unpatched"], base)
    times = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order if r % 2 else reversed(order):
            t = time.perf_counter()
            go[name](configs[name][0])
            times[name].append(time.perf_counter() - t)
        print(backend, f"round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
    identical = {name: bool(torch.equal(outputs[name], outputs["unpatched"]))
                 for name in ("mask-history window", "heatmap")}
    coverage = configs["all edits"][1].last.value.masks.float().mean().item()
    print(json.dumps({"backend": backend, "times": times, "peaks": peaks, "share": share, "identical": identical,
                      "coverage": coverage, "load": os.getloadavg()}))


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    lo, mid, hi = statistics.quantiles(xs, n=4, method="inclusive")
    return lo, mid, hi


def report(results: dict, rounds: int, write=True):
    import torch

    lines = [
        "# DeLeaker and the attention heatmap over a whole sampling (FLUX.1's width)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other work (timings are noisy), Python "
        f"{platform.python_version()}, torch {torch.__version__}, CPU, fp32, 2 threads. Model: FLUX-shaped, random "
        f"weights, hidden {REALISTIC['hidden']}, {REALISTIC['heads']} heads x 128 (FLUX.1's), {REALISTIC['depth']} "
        f"double + {REALISTIC['single']} single blocks; {SIZE}x{SIZE} px (1024 image + 256 text tokens), {STEPS} "
        f"Euler steps, cfg 1, batch 1, entities cow and horse. {rounds} rounds, each sampling every configuration "
        "once (order rotated and reversed round to round); x unpatched = median of the per-round ratios to that "
        "round's unpatched sampling, (quartiles); peak memory = the process's resident high-water mark during the "
        "configuration's first sampling (weights and encoders included). Reproduce: "
        "`python bench/bench_deleaker.py` (also `make bench`).",
        "",
        "Configurations: *mask-history window*: DeLeaker reading the mask history in every block from its start "
        "(mask_history 1.0) with its edits held off; *heatmap*: every step and block; *no image-image* / *all "
        f"edits*: DeLeaker at mask_threshold {MASK_THRESHOLD} (the reference's 60% history window; edits from the "
        "first step's last double block).",
    ]
    for backend, r in results.items():
        times, peaks = r["times"], r["peaks"]
        base = times["unpatched"]
        lines += ["", f"## {BACKENDS[backend]}", "",
                  f"Attention: {r['share'] * 100:.0f}% of the unpatched sampling's time. Images with the read-only "
                  "configurations bit-identical to the unpatched ones: "
                  + ", ".join(f"{n}: {'yes' if ok else 'NO'}" for n, ok in r["identical"].items())
                  + f". Image tokens in each entity's mask (all edits): {r['coverage'] * 100:.0f}%. Load average at "
                  f"the end: {' / '.join(f'{x:.2f}' for x in r['load'])}.", "",
                  "| configuration | sampling time | x unpatched (quartiles) | target | peak memory | x unpatched |",
                  "|---|---:|---:|---|---:|---:|"]
        for name in CONFIGS:
            lo, mid, hi = quartiles([t / b for t, b in zip(times[name], base, strict=True)])
            target = TARGETS.get(name)
            verdict = "" if target is None else f"<= {target:.2f}x: {'met' if mid <= target else 'not met'}"
            pk = peaks[name]["peak"] / peaks["unpatched"]["peak"]
            lines.append(f"| {name} | {statistics.median(times[name]):.1f} s | {mid:.3f} ({lo:.3f}–{hi:.3f}) | "
                         f"{verdict} | {peaks[name]['peak']:.0f} MB | {pk:.3f} |")
    lines += ["", "GPU at FLUX.1 dimensions (19+38 blocks, 3072 hidden, 24 heads, 1024² and 512²): "
              "`python bench/bench_deleaker.py --gpu` writes `deleaker_gpu.md`; not run yet, no GPU machine was lent "
              "to this task."]
    if write:
        (REPO / "bench" / "results" / "deleaker.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run_all(backends, rounds, write=True):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results, failed = {}, None
    for backend in backends:
        r = subprocess.run([sys.executable, __file__, "--backend", backend, str(rounds)], capture_output=True,
                           text=True, env=env)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            failed = r.stdout[-2000:] + r.stderr[-3000:]
            print(failed, flush=True)
            break
        results[backend] = json.loads(lines[-1])
        print(lines[-1], flush=True)  # kept in the log, whatever comes next
    if results:
        report(results, rounds, write and failed is None)
    if failed is not None:
        raise SystemExit(f"a backend failed:\n{failed}")


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
    _, spec = m["LeaklessDeLeakerEncode"].execute(clip=clip, text=PROMPT, entities="").args
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
    cond, words_cond, configs = configurations(nodes, patcher, clip)
    configs = {name: configs[name] for name in CONFIGS}
    for name, (beta1, image_image) in GPU_EXTRA.items():
        configs[name] = deleaker_model(m, patcher, spec, beta1, image_image)
    for size in sizes:
        for config, (used, run) in configs.items():
            go = sampler(words_cond if config == "heatmap" else cond, size, steps)
            contract = sys.modules[type(installed_patch(used)).__module__.rsplit(".", 1)[0] + ".contract"] \
                if config in GPU_EXTRA else None
            if contract is not None:  # the scores as another backend gets them: the fused kernel not the model's
                verdict = contract.AttentionCall.fused_is_model
                contract.AttentionCall.fused_is_model = property(lambda self: False)
            try:
                seconds, peak, added = measure(go, used)
            finally:
                if contract is not None:
                    contract.AttentionCall.fused_is_model = verdict
            coverage = None
            if config in ("no image-image", "all edits") and run is not None and run.last is not None:
                coverage = float(run.last.value.masks.float().mean())
            results[size, config] = dict(seconds=seconds, peak=peak, added=added, coverage=coverage)
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
    if len(sys.argv) > 3 and sys.argv[1] == "--backend":
        return run_backend(sys.argv[2], int(sys.argv[3]))
    if "--gpu" in sys.argv:
        return run_gpu(smoke="--smoke" in sys.argv)
    if "--quick" in sys.argv:
        return run_all(["sdpa"], 1, write=False)
    run_all(list(BACKENDS), ROUNDS)


if __name__ == "__main__":
    main()
