"""DeLeaker and heatmap cost of ONE attention call at each joint family's real size (issue 24).

    .cache/venv/bin/python bench/bench_attention_calls.py            (also part of `make bench`; ~45 min on 2 cores)
    .cache/venv/bin/python bench/bench_attention_calls.py --quick    (a smoke run, ~2 min; prints, writes nothing)
    .cache/venv/bin/python bench/bench_attention_calls.py --size 512 (one size only)

Random q/k/v (fp32, CPU, every thread the machine has, seed 0) shaped as each family's attention call at 512x512 px
(1024 image tokens) and, for FLUX.1, FLUX.2 and Qwen-Image, at 1024x1024 px (4096): its real head count and head
size and its text rows. Two entities with planted, object-sized masks (two overlapping discs, about a quarter of
the image each); the image-image statistics run on the real logits of these q/k. Each round times every
configuration of every family once, in an order that changes each round (at least 8 rounds); the ratio over plain
attention is taken per round, then its median and quartiles. --quick: FLUX.1 and HiDream at 512², one cold call
of each. Peak memory: one subprocess per family and size with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_),
so every tensor's pages go back to the system when freed; each configuration runs once to warm its caches, then
once more between a reset of the resident high-water mark (/proc/self/clear_refs) and a read of VmHWM.
Writes bench/results/attention_calls.md.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import combinations

from common import REPO, peak_rss_during
from pack import import_pack_as

SIZES = {512: (32, 32), 1024: (64, 64)}  # px -> image token grid (a /8 latent patchified by 2, or /16)
SEED = 0
ROUNDS = {512: 12, 1024: 8}
C = ".cache/comfyui-0.33.0/comfy/"


@dataclass(frozen=True)
class Family:
    heads: int
    head_dim: int
    text: tuple[int, ...]  # text segments as the attention sees them, in order (each holds the prompt's words)
    source: str  # where ComfyUI 0.33.0 says so
    prompt_at_end: bool = False  # left padding: the prompt's tokens end its segment
    image_first: bool = False  # the call's sequence is [image, text]: the driver permutes to text first and back

    @property
    def txt_len(self) -> int:
        return sum(self.text)


FAMILIES = {
    "FLUX.1 dev": Family(24, 128, (256,), f"{C}model_detection.py:283,292 (24 heads, hidden 3072); T5 "
                         f"min_length=256: {C}text_encoders/flux.py:14"),
    "FLUX.2 dev": Family(48, 128, (512,), f"{C}model_detection.py:266-268 (48 heads, axes 4x32 = head 128, patch "
                         f"1 on the /16 latent); left pad to 512: {C}model_base.py:1089", prompt_at_end=True),
    "Qwen-Image": Family(24, 128, (64,), f"{C}ldm/qwen_image/model.py:348-349 (24 x 128, 60 layers); prompt after "
                         f"the stripped template, no padding: {C}text_encoders/qwen_image.py:11"),
    "Z-Image": Family(30, 128, (64,), f"{C}model_detection.py:598-599 (dim 3840, 30 heads); caption padded to a "
                      f"multiple of 32: {C}model_detection.py:612, {C}ldm/lumina/model.py:414"),
    "SD3.5 Large": Family(38, 64, (77, 77), f"{C}ldm/modules/diffusionmodules/mmdit.py:810-811 (hidden 64 x depth, "
                          f"heads = depth = 38); 77 CLIP rows + T5 min_length=77: {C}text_encoders/sd3_clip.py:36"),
    "HiDream I1": Family(20, 128, (128, 128, 128), f"{C}model_detection.py:821,827 (20 x 128); T5 128 + Llama 128 "
                         f"({C}text_encoders/hidream.py:14-15) + per-block Llama 128 ({C}ldm/hidream/model.py:790); "
                         f"image first: {C}ldm/hidream/model.py:120", image_first=True),
    "Krea 2": Family(48, 128, (64,), f"{C}ldm/krea2/model.py:233,247 (6144 features, 48 heads of 128; 12 KV heads "
                     f"repeated to 48 before the call, :93-96); prompt after the stripped template: "
                     f"{C}text_encoders/krea2.py"),
}
AT_1024 = ("FLUX.1 dev", "FLUX.2 dev", "Qwen-Image")  # the families the GPU run names; 1024² costs ~12x per call
CONFIGS = ("plain", "history", "heatmap", "no image-image", "all edits", "history + all edits",
           "history, separate lse pass", "heatmap, separate lse pass", "all edits, another backend", "dense reference")
CONFIGS_1024 = CONFIGS[:6]  # the dense reference needs 2-4 GB per call there; the fallbacks are measured at 512²
TARGETS = {"history": 1.05, "heatmap": 1.05, "no image-image": 1.05, "all edits": 1.20}
WORDS = ((2, 3), (6, 7))  # each entity's two tokens, counted from the start of the prompt in every text segment
PROMPT_TOKENS = 24  # how long the prompt is inside a left-padded segment


def entity_positions(family: Family) -> tuple[tuple[int, ...], ...]:
    starts, at = [], 0
    for length in family.text:
        starts.append(at + (length - PROMPT_TOKENS if family.prompt_at_end else 0))
        at += length
    return tuple(tuple(s + w for s in starts for w in words) for words in WORDS)


def planted_masks(torch, grid):
    """[1, 2, N] bool: two discs of radius 9/32 of the grid (about 25% of it each) that overlap a little."""
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r, cy = 9 * h / 32, h / 2
    discs = [((y - cy) ** 2 + (x - cx * w / 32) ** 2 <= r * r).flatten() for cx in (10, 23)]
    return torch.stack(discs)[None]


def sdpa(q, k, v, mask=None):
    """Plain attention, as ComfyUI's SDPA attention returns it: [b, H, Lq, D] -> [b, Lq, H*D]."""
    import torch.nn.functional as F

    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def dense_edit(q, k, v, masks, layout, st, dl):
    """The reference processor's edit (tokeron/DeLeaker) with full B x H x L x L fp32 logits, as the official code
    computes it: per entity pair, cross image->text blocked, self image->text logits x alpha (once per entity),
    image->image blocked above mean + beta2 * std of the head-mean probabilities on M_i x M_j, re-softmax."""
    import math

    import torch

    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    p = s.softmax(-1)
    img = layout.image
    s_img = s[:, :, img]  # a view: edits on it edit s
    text_cols = [torch.zeros(s.shape[-1], dtype=torch.bool).index_fill_(0, dl.entity_index(layout, e, "cpu"), True)
                 for e in range(len(layout.entities))]
    strengthened = set()
    for i, j in combinations(range(len(layout.entities)), 2):
        mi, mj = masks[:, i], masks[:, j]  # [B, N]
        if st.cross_text:
            for rows, e in ((mi, j), (mj, i)):
                s_img.masked_fill_(rows[:, None, :, None] & text_cols[e], float("-inf"))
        if st.self_text:
            for e, rows in ((i, mi), (j, mj)):
                if e not in strengthened or st.alpha_per_pair:
                    strengthened.add(e)
                    cols = dl.entity_index(layout, e, "cpu")
                    sub = s_img[..., cols]
                    s_img[..., cols] = torch.where(rows[:, None, :, None], sub * st.alpha, sub)
        if st.image_image:
            im_im = p[:, :, img, img].mean(1)
            for rows, cols in ((mi, mj), (mj, mi)):
                w = im_im * (rows[:, :, None] & cols[:, None, :])
                nz = w[w != 0]
                if nz.numel():
                    s_img[..., img].masked_fill_((w > nz.mean() + st.beta_image * nz.std())[:, None], float("-inf"))
        p = s.softmax(-1)
    out = torch.matmul(p, v)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def calls(name: str, size: int, m, torch):
    """{configuration: a function running one attention call as the driver and the patch do} for one family at one
    size, and a check value: the largest difference between the edit and the dense reference (None at 1024²)."""
    dl, heatmap = m.deleaker, m.heatmap
    fam, grid = FAMILIES[name], SIZES[size]
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(1, fam.heads, n + fam.txt_len, fam.head_dim, generator=g) for _ in range(3))
    layout = m.layout.text_then_image(fam.txt_len, grid, entity_positions(fam))
    masks = planted_masks(torch, grid)
    every, no_ii = dl.Settings(), dl.Settings(image_image=False)
    plans = {st: [dl.MaskPlan(masks[0], st)] for st in (every, no_ii)}  # after the history: made once per run
    history, total = dl.MaskHistory(), heatmap.HeatmapSum(grid)
    # the call as the model passes it (HiDream: image first) and the driver's canonical order (text first)
    if fam.image_first:
        own = [torch.cat([x[:, :, fam.txt_len:], x[:, :, :fam.txt_len]], dim=2) for x in (q, k, v)]
        order = torch.tensor(list(range(n, n + fam.txt_len)) + list(range(n)))
    else:
        own, order = [q, k, v], None

    def view():  # the driver's AttentionCall (its verdict: the fused kernel is the model's SDPA)
        return m.contract.AttentionCall(*own, None, "main", 0, attend=sdpa, order=order, verify=lambda: True)

    def plain():
        return sdpa(*own)

    def read_only(add):  # the fused kernel being the model's: the call's output and its lse, from one call
        a = view()
        qm, km, _, _, lay = a.model_order(layout)
        out, lse = a.fused_call(model_order=True)
        add(dl.scores_from_lse(qm, km, lse, lay))
        return out

    def read_only_lse_pass(add):  # another backend (sub-quadratic, Sage, Flash): a separate exact pass
        qm, km, vm, _, lay = view().model_order(layout)
        add(dl.entity_scores(qm, km, lay, v=vm))
        return plain()

    def edit(st, plan):  # after the history window: the run's plan, made once
        a = view()
        qm, km, vm, _, lay = a.model_order(layout)
        return dl.deleaker_attention(qm, km, vm, sdpa, plan, lay, st, [0], None, a.fused_call(model_order=True))

    def history_and_edits():  # inside the history window once intervening: scores, masks and plan every call
        a = view()
        qm, km, vm, _, lay = a.model_order(layout)
        whole = a.fused_call(model_order=True)
        history.update(dl.scores_from_lse(qm, km, whole[1], lay))
        dl.entity_masks(history.mean, layout, every)  # its cost; the edit uses the planted masks
        plan = [dl.MaskPlan(masks[0], every)]
        return dl.deleaker_attention(qm, km, vm, sdpa, plan, lay, every, [0], None, whole)

    def edit_other_backend(st, plan):  # the model's attention is another kernel: `attend` for the rows left alone
        qm, km, vm, _, lay = view().model_order(layout)
        return dl.deleaker_attention(qm, km, vm, sdpa, plan, lay, st, [0])

    def dense():
        out = dense_edit(q, k, v, masks, layout, every, dl)  # text first
        return out if order is None else torch.empty_like(out).index_copy_(1, order, out)

    def add_map(scores):
        total.add(scores, grid)

    runs = {
        "plain": plain,
        "history": lambda: read_only(history.update),
        "heatmap": lambda: read_only(add_map),
        "no image-image": lambda: edit(no_ii, plans[no_ii]),
        "all edits": lambda: edit(every, plans[every]),
        "history + all edits": history_and_edits,
        "history, separate lse pass": lambda: read_only_lse_pass(history.update),
        "heatmap, separate lse pass": lambda: read_only_lse_pass(add_map),
        "all edits, another backend": lambda: edit_other_backend(every, plans[every]),
        "dense reference": dense,
    }
    check = None
    if size == 512:
        dense = runs["dense reference"]()
        check = max(float((runs[c]() - dense).abs().max())
                    for c in ("all edits", "history + all edits", "all edits, another backend"))
        assert torch.equal(runs["history"](), plain()) and torch.equal(runs["heatmap"](), plain())  # read only
    return {c: runs[c] for c in (CONFIGS if size == 512 else CONFIGS_1024)}, check


def load(threads=None):
    import torch

    torch.set_num_threads(threads or os.cpu_count())
    import_pack_as("leakless")
    from types import SimpleNamespace

    from leakless.nodes.methods import contract, deleaker, heatmap, kernels
    from leakless.nodes.registry import layout

    return SimpleNamespace(contract=contract, deleaker=deleaker, heatmap=heatmap, kernels=kernels, layout=layout), torch


def memory(name: str, size: int):
    """One family's per-call peaks at one size, printed as one JSON line (run in its own process)."""
    m, torch = load()
    runs, _ = calls(name, size, m, torch)
    for fn in runs.values():
        fn()  # warm-up: caches of the layout and plans, as from the second call of a run on
    out = {}
    for config in (*runs, "plain"):  # plain twice, first and last: the two should agree
        peak, added = peak_rss_during(runs[config])
        out[config if config not in out else "plain again"] = dict(peak=peak, added=added)
    print(json.dumps(out))


def measure_memory(jobs) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = {}
    for name, size in jobs:
        r = subprocess.run([sys.executable, __file__, "--memory", name, str(size)], capture_output=True, text=True,
                           env=env)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise SystemExit(r.stderr[-3000:])
        results[name, size] = json.loads(lines[-1])
        print(name, size, "memory done", flush=True)
    return results


def measure_time(jobs, rounds: int, warm_up=True):
    """{(family, size): {configuration: [seconds per round]}}, {(family, size): check}, load averages seen."""
    m, torch = load()
    built = {job: calls(*job, m, torch) for job in jobs}
    times = {job: {c: [] for c in runs} for job, (runs, _) in built.items()}
    for runs, _ in built.values() if warm_up else ():
        for fn in runs.values():
            fn()
    loads = []
    for r in range(rounds):
        for job, (runs, _) in built.items():
            configs = list(runs)
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for config in order if r % 2 else reversed(order):
                t = time.perf_counter()
                runs[config]()
                times[job][config].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{rounds} done (load {loads[-1]:.2f})", flush=True)
    return times, {job: check for job, (_, check) in built.items()}, loads


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    lo, mid, hi = statistics.quantiles(xs, n=4, method="inclusive")
    return lo, mid, hi


def report(times, checks, mem, loads, write=True):
    import torch

    m, _ = load()
    ratio = {job: {c: quartiles([t / p for t, p in zip(ts[c], ts["plain"], strict=True)]) for c in ts}
             for job, ts in times.items()}
    rounds = len(next(iter(times.values()))["plain"])
    masks = planted_masks(torch, SIZES[512])[0]
    sizes, overlap = " and ".join(str(int(x.sum())) for x in masks), int((masks[0] & masks[1]).sum())
    q = torch.zeros(1, 24, 1280, 128)
    kernel = m.kernels.kernel_name(q, q, q)
    lines = [
        "# DeLeaker and heatmap cost per attention call, at each family's real size",
        "",
        f"Machine: {platform.machine()} ({_cpu()}), {os.cpu_count()} cores shared with other work (timings are noisy),"
        f" Python {platform.python_version()}, torch {torch.__version__}, fp32 on the CPU, "
        f"{torch.get_num_threads()} threads; load average (1 min) during the rounds: median "
        f"{statistics.median(loads):.2f}, {min(loads):.2f}–{max(loads):.2f}. Reproduce: "
        "`python bench/bench_attention_calls.py` (also `make bench`).",
        "",
        "One attention call with random q/k/v (seed 0) at 512x512 px (1024 image tokens, 32x32) for every family and "
        f"at 1024x1024 px (4096, 64x64) for {', '.join(AT_1024)}, with the family's text rows; two entities of two "
        f"tokens in every text segment; planted masks (two discs, at 512² of {sizes} image tokens, about 25% of the "
        f"image each, overlapping on {overlap}). The edited rows run `kernels.attention`: on this CPU {kernel} "
        "(`aten._scaled_dot_product_flash_attention_for_cpu`, SDPA's own kernel, which returns the row log-sum-exp). "
        "Configurations:",
        "",
        "- **plain**: `scaled_dot_product_attention` on [1, H, L, D] and the reshape to [1, L, H*D] (ComfyUI's SDPA "
        "attention; every ratio is over it);",
        "- **history**: a block in the mask-history window before DeLeaker edits, where the driver found the fused "
        "kernel to be the model's attention (ComfyUI's SDPA: its default on NVIDIA): the call's output and row "
        "log-sum-exp from one fused call (`AttentionCall.fused_call`), the entity scores off the lse "
        "(`scores_from_lse`: the image rows' logits on the entity tokens only), the history's running mean;",
        "- **heatmap**: the same for the attention heatmap (its running sum of maps);",
        "- **no image-image**: after the history window: `deleaker_attention` with text edits only (the run's "
        "`MaskPlan`, made once), where the fused kernel is the model's attention: from the whole call's fused output "
        "and lse, the edited rows corrected on their explicit columns;",
        "- **all edits**: the same with every edit (cross text, self text, image-image);",
        "- **history + all edits**: a block in the history window once DeLeaker edits (the first 60% of the steps): "
        "the scores off the whole call's lse, masks from the history (`entity_masks`), a new `MaskPlan` (the masks "
        "change every call there), and `deleaker_attention` with every edit;",
        "- **history / heatmap, separate lse pass**: where the model's attention is another kernel (ComfyUI's CPU "
        "default, sub-quadratic attention; Sage; FlashAttention): the model's output and `entity_scores`, an exact "
        "pass of its own over the image rows' logits;",
        "- **all edits, another backend**: *all edits* where the model's attention is another kernel: the rows "
        "left alone run it (`attend`, here SDPA), the edited rows one fused call without their explicit columns;",
        "- **dense reference**: the edit of *all edits* with full 1 x H x L x L fp32 logits, as the official code "
        "computes it (`dense_edit` in this file; 512² only).",
        "",
        "HiDream's call is image first: every configuration works in the call's own order, as the patches do "
        "(`AttentionCall.model_order`: the layout moved, nothing reordered; the dense reference permutes). "
        f"Timing: after a warm-up call of each, {rounds} rounds, each running every configuration of every family "
        "once (order rotated and reversed round to round); x plain = median of the per-round ratios to that round's "
        "plain call, with the quartiles (IQR). Memory: 'added' = the resident high-water mark during the call minus "
        "the memory resident before it (q, k, v, torch itself), in a process of its own per family and size with "
        "glibc's mmap threshold fixed at 64 KiB (freed tensors leave the resident set at once), after one warm-up "
        "call of each configuration; 'process' = the whole process's peak, torch's runtime and the inputs included.",
    ]
    for size in SIZES:
        jobs = [job for job in times if job[1] == size]
        if not jobs:
            continue
        shown = [c for c in times[jobs[0]] if c != "plain"]
        lines += ["", f"## Time per call, {size}x{size} px", "",
                  "| family | H x D | L (text + image) | plain | " + " | ".join(shown) +
                  (" | max abs diff, edits vs dense |" if size == 512 else " |"),
                  "|---|---|---:|---:|" + "---:|" * len(shown) + ("---:|" if size == 512 else "")]
        for job in jobs:
            name, fam = job[0], FAMILIES[job[0]]
            plain_ms = statistics.median(times[job]["plain"]) * 1e3
            cells = [f"{ratio[job][c][1]:.2f}x ({ratio[job][c][0]:.2f}–{ratio[job][c][2]:.2f})" for c in shown]
            n = SIZES[size][0] * SIZES[size][1]
            lines.append(f"| {name} | {fam.heads} x {fam.head_dim} | {fam.txt_len} + {n} | {plain_ms:.0f} ms | "
                         + " | ".join(cells) + (f" | {checks[job]:.1e} |" if size == 512 else " |"))
        mem_jobs = [job for job in mem if job[1] == size]
        if mem_jobs:
            configs = [c for c in mem[mem_jobs[0]] if c not in ("plain", "plain again")]
            lines += ["", f"## Peak memory per call, {size}x{size} px", "",
                      "Added by the call, MB (x plain's added); then the whole process's peak (torch's runtime, q, "
                      "k, v and the call) over plain's.", "",
                      "| family | plain | " + " | ".join(configs) + " | plain again | process peak x plain: "
                      + " / ".join(configs) + " |", "|---|" + "---:|" * (len(configs) + 3)]
            for job in mem_jobs:
                mm = mem[job]
                base, peak = mm["plain"]["added"], mm["plain"]["peak"]
                cells = [f"{base:.0f}"] + [f"{mm[c]['added']:.0f} ({mm[c]['added'] / base:.1f}x)" for c in configs]
                peaks = " / ".join(f"{mm[c]['peak'] / peak:.3f}" for c in configs)
                lines.append(f"| {job[0]} | " + " | ".join(cells) + f" | {mm['plain again']['added']:.0f} | "
                             f"{peaks} |")
    lines += ["", "## Against issue 24's targets (per call, median x plain; process peak x plain)", "",
              "| family | size | " + " | ".join(f"{c} <= {t:.2f}x" for c, t in TARGETS.items())
              + " | process peak <= 1.05x (worst of history, heatmap, edits) |", "|---|---|" + "---|" * 5]
    for job in times:
        def verdict(x, limit, digits=2):
            return f"{'met' if x <= limit else 'not met'} ({x:.{digits}f}x)"

        cells = [verdict(ratio[job][c][1], t) for c, t in TARGETS.items()]
        if job in mem:
            worst = max(mem[job][c]["peak"] / mem[job]["plain"]["peak"] for c in
                        ("history", "heatmap", "no image-image", "all edits", "history + all edits"))
            cells.append(verdict(worst, 1.05, 3))
        else:
            cells.append("")
        lines.append(f"| {job[0]} | {job[1]}² | " + " | ".join(cells) + " |")
    lines += ["", NOTES, "", "## Where the dimensions come from (ComfyUI 0.33.0)", ""]
    lines += [f"- {name}: {fam.heads} heads x {fam.head_dim}, text {' + '.join(map(str, fam.text))} rows"
              f"{', image first' if fam.image_first else ''}{', left-padded' if fam.prompt_at_end else ''}: "
              f"{fam.source}." for name, fam in FAMILIES.items()]
    if write:
        (REPO / "bench" / "results" / "attention_calls.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


NOTES = """## Where the cost goes (CPU)

With the fused kernel as the model's attention, everything but the image-image edit costs about a plain call (the
history, heatmap and no image-image columns). What *all edits* adds is that edit's own work: per pair of entities
the M_i x M_j logits for its statistics and each edited row's correction on the other entity's mask keys (a few
hundred explicit columns per row, against tens for the text edits). `torch.profiler` on FLUX.1's call at 512² (one
thread): the fused kernel 77% of the time, the two matmuls of those columns (q x k_cut, weights x v_cut: about 1.5
GFLOP against the call's 20) 12%, gathers and copies 5%, elementwise work 4%. Those matmuls run on row sets of a few
hundred rows at about half the fused kernel's throughput, hence 1.14-1.41x where the flops alone would give about
1.08x; they grow with the masks' area (1.33-1.42x at 1024²). `image_image = false` removes them."""


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"


def main():
    if len(sys.argv) > 3 and sys.argv[1] == "--memory":
        return memory(sys.argv[2], int(sys.argv[3]))
    if "--quick" in sys.argv:  # text first and image first, every configuration timed once, cold
        jobs = [("FLUX.1 dev", 512), ("HiDream I1", 512)]
        mem = measure_memory(jobs[:1])
        times, checks, loads = measure_time(jobs, 1, warm_up=False)
        return report(times, checks, mem, loads, write=False)
    sizes = [int(sys.argv[sys.argv.index("--size") + 1])] if "--size" in sys.argv else list(SIZES)
    jobs = [(name, size) for size in sizes for name in (FAMILIES if size == 512 else AT_1024)]
    mem = measure_memory(jobs)
    times, checks, loads = {}, {}, []
    for size in sizes:
        t, c, ld = measure_time([job for job in jobs if job[1] == size], ROUNDS[size])
        times.update(t)
        checks.update(c)
        loads += ld
    report(times, checks, mem, loads)


if __name__ == "__main__":
    main()
