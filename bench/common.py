"""Shared benchmark helpers: the test environment's ComfyUI, and a median timer."""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "harness"), str(REPO / "tests")]


def median_time(fn, repeat=3):
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def flux_setup(hidden=512, heads=4, depth=2, single=2, device=None, dtype=None):
    """The test ComfyUI with every node loaded, a random FLUX-shaped model (ModelPatcher) built in memory with
    ComfyUI's classes, and the tiny FLUX text encoders. Returns (nodes module, patcher, clip).

    device None: CPU, 2 threads, fp32. Otherwise the model is built in `dtype` (default bf16) directly on `device`;
    for "cuda" ComfyUI starts without --cpu and so samples on the GPU."""
    import comfy_env
    import tiny_models

    nodes = comfy_env.import_comfy(cpu=device in (None, "cpu"))
    tiny_models.write_all(str(comfy_env.BASE / "models"))
    comfy_env.load_all_nodes()
    import comfy.supported_models
    import torch

    if device in (None, "cpu"):
        torch.set_num_threads(2)
    dtype = dtype or (torch.float32 if device is None else torch.bfloat16)
    cfg = tiny_models.flux_cfg(hidden=hidden, heads=heads, depth=depth, single=single)
    patcher = tiny_models.patcher(tiny_models.build_unet(comfy.supported_models.Flux, cfg, dtype=dtype,
                                                         device=device))
    clip = nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]
    return nodes, patcher, clip


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_during(fn) -> tuple[float, float]:
    """(peak resident memory while fn runs, that peak minus the memory resident before it), in MB. Linux: the
    process's high-water mark is reset first (/proc/self/clear_refs), so earlier peaks (model loading) don't count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kb("VmRSS")
    fn()
    peak = _rss_kb("VmHWM")
    return peak / 1024, (peak - before) / 1024


def run_each_in_own_process(script, configs) -> dict:
    """Runs `script --config NAME` for every configuration, each in a fresh process so its peak memory (max RSS)
    is its own; each prints one JSON line. Returns {name: that JSON}."""
    results = {}
    for name in configs:
        r = subprocess.run([sys.executable, script, "--config", name], capture_output=True, text=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not line:
            raise SystemExit(r.stderr[-3000:])
        results[name] = json.loads(line[-1])
        print(results[name], flush=True)
    return results
