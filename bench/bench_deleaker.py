"""DeLeaker cost: sampling time and peak memory, patched / unpatched, and the dense reference / unpatched.

    .cache/venv/bin/python bench/bench_deleaker.py        (also part of `make bench`)

CPU: a mid-size random-weight FLUX-shaped model built in memory with ComfyUI's classes (hidden 512, 4 heads of 128,
2 double + 4 single blocks), 512x512 px (1024 image + 256 text tokens), 4 Euler steps, batch 1, cfg 1. Each
configuration runs in its own process so peak memory (max RSS) is its own. "dense" is the reference algorithm
written with full B x H x L x L matrices and a full-matrix history, as the paper's code does it.
Writes bench/results/deleaker.md. FLUX.1 dimensions on a GPU need a lent GPU machine: not measured here.
"""

import json
import platform
import resource
import statistics
import sys
import time

from common import REPO, flux_setup, run_each_in_own_process

CONFIGS = ["unpatched", "all edits", "no image-image", "dense reference"]
SIZE, STEPS = 512, 4


def dense_override(run, dl):
    """The reference processor's algorithm with full matrices (history = running mean of the full P)."""
    import math

    import torch

    state = {"hist": None, "n": 0}

    def override(func, q, k, v, heads, **kwargs):
        to = kwargs["transformer_options"]
        layout, n_double, n_single = run.call[:3]
        n_layers = n_double + n_single
        layer = to["block_index"] + (0 if to["block_type"] == "double" else n_double)
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
        masks = dl.entity_masks(scores, layout, run.settings)
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


def run_config(config):
    nodes, patcher, clip = flux_setup(hidden=512, heads=4, depth=2, single=4)
    import comfy.sample
    import torch

    m = nodes.NODE_CLASS_MAPPINGS
    cond, spec = m["LeaklessDeLeakerEncode"].execute(clip=clip, text="A **cow** and a **horse** in a farm",
                                                     entities="").args
    settings = dict(mask_threshold=-1.0, image_threshold=1.0, alpha=1.2, mask_history=0.6, cross_text=True,
                    self_text=True, image_image=config != "no image-image", alpha_per_pair=False,
                    overlap="reference")
    used = patcher
    if config != "unpatched":
        used, run = m["LeaklessDeLeaker"].execute(model=patcher, entities=spec, **settings).args
        if config == "dense reference":
            dl = sys.modules[type(run).__module__].deleaker
            used.model_options["transformer_options"]["optimized_attention_override"] = dense_override(run, dl)
    latent = torch.zeros(1, 16, SIZE // 8, SIZE // 8)
    noise = comfy.sample.prepare_noise(latent, 1)

    def go(model):
        return comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", cond, cond, latent,
                                   disable_pbar=True)

    go(used)  # warm-up
    go(patcher)
    ratios, times = [], []
    for _ in range(5):  # interleaved with the unpatched model, so machine noise hits both alike
        t = time.perf_counter()
        go(patcher)
        plain = time.perf_counter() - t
        t = time.perf_counter()
        go(used)
        times.append(time.perf_counter() - t)
        ratios.append(times[-1] / plain)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    coverage = float(run.masks.float().mean()) if config not in ("unpatched", "dense reference") else None
    print(json.dumps({"config": config, "seconds": statistics.median(times), "ratio": statistics.median(ratios),
                      "peak_mb": peak_mb, "coverage": coverage}))


def _coverage(result) -> str:
    return "" if result["coverage"] is None else f"{result['coverage'] * 100:.0f}% per entity"


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--config":
        return run_config(sys.argv[2])
    import torch

    results = run_each_in_own_process(__file__, CONFIGS)
    base = results["unpatched"]
    lines = [
        "# DeLeaker (FLUX)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, CPU, 2 "
        "threads; median of 5 runs after a warm-up; 'x unpatched' = median of 5 per-round ratios, each round timing "
        "the unpatched and the patched model back to back in one process (this VM's timing noise is large); peak "
        "memory = max RSS of each configuration's own process (model and encoders included). Reproduce: `make bench`.",
        f"Model: FLUX-shaped, random weights, hidden 512, 4 heads x 128, 2 double + 4 single blocks; {SIZE}x{SIZE} "
        f"px (1024 image + 256 text tokens), {STEPS} Euler steps, entities cow, horse.",
        "",
        "| configuration | sampling time | x unpatched | peak memory | x unpatched | image tokens in a mask |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config in CONFIGS:
        r = results[config]
        lines.append(f"| {config} | {r['seconds']:.2f} s | {r['ratio']:.2f} | "
                     f"{r['peak_mb']:.0f} MB | {r['peak_mb'] / base['peak_mb']:.2f} | {_coverage(r)} |")
    lines += ["", "GPU at FLUX.1 dimensions (19+38 blocks, 3072 hidden, 24 heads, 1024² and 512²): not measured, "
              "no GPU machine was lent to this task."]
    out = REPO / "bench" / "results" / "deleaker.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
