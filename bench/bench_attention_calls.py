"""DeLeaker and heatmap cost of ONE attention call at each joint family's real size (issue 14 §3).

    .cache/venv/bin/python bench/bench_attention_calls.py            (also part of `make bench`; ~10 min)
    .cache/venv/bin/python bench/bench_attention_calls.py --quick    (a smoke run, ~1-2 min; prints, writes nothing)

Random q/k/v (fp32, CPU, every thread the machine has, seed 0) shaped as each family's attention call at 512x512
px: its real head count and head size, 1024 image tokens and its text rows. Two entities with planted,
object-sized masks (two overlapping discs, about a quarter of the image each); the image-image statistics run on
the real logits of these q/k. Each of 15 rounds (fewer, not under 8, once 6 minutes are spent) times every
configuration of every family once, in an order that changes each round; the ratio over plain attention is taken
per round, then its median and quartiles. --quick: FLUX.1 and HiDream, one cold call of each.
Peak memory: one subprocess per family with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), so every
tensor's pages go back to the system when freed; each configuration runs once to warm its caches, then once more
between a reset of the resident high-water mark (/proc/self/clear_refs) and a read of VmHWM.
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

from conftest import import_pack_as  # noqa: E402 - on the path set up by common

GRID = (32, 32)  # 512 px: a /8 latent patchified by 2 (FLUX.1, Qwen-Image, Z-Image, SD3.5, HiDream, Krea 2), or /16
SEED = 0
ROUNDS, BUDGET_S = 15, 360  # rounds, stopping early (not under MIN_ROUNDS) once the budget is spent
MIN_ROUNDS = 8
C = ".cache/comfyui-0.33.0/comfy/"


@dataclass(frozen=True)
class Family:
    heads: int
    head_dim: int
    text: tuple[int, ...]  # text segments as the attention sees them, in order (each holds the prompt's words)
    source: str  # where ComfyUI 0.33.0 says so
    prompt_at_end: bool = False  # left padding: the prompt's tokens end its segment
    image_first: bool = False  # the call's sequence is [image, text]: the glue permutes to text first and back

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
CONFIGS = ("plain", "history", "history + all edits", "all edits", "no image-image", "image-image statistics",
           "heatmap", "dense reference")
WORDS = ((2, 3), (6, 7))  # each entity's two tokens, counted from the start of the prompt in every text segment
PROMPT_TOKENS = 24  # how long the prompt is inside a left-padded segment


NOTES = """## Where the cost goes (CPU)

From `torch.profiler` on FLUX.1's call (same machine, same noise):
- *no image-image*: the attention arithmetic is the plain call's (the fused kernel's time summed over the row
  groups equals one plain call); the rest is moving data: gathering the queries into plan order, the edited keys
  and values (`index_select`, one copy per group), the output's `cat` and the scatter back (`index_copy_`). At
  15-40 MB per [1, H, L, D] tensor and a shared memory bus this is the 1.4-1.7x.
- *history*, *heatmap*: on the CPU `entity_scores` writes the image rows' fp32 logits chunk by chunk (`bmm`, then
  one exp pass); that `bmm` costs about as much as the whole fused attention call, so these configurations are
  2-3x. The GPU path reads the scores off one fused call instead (`fused=True`) and is not measured here.
- *all edits*: the image-image statistics (logits of the rows in M_i or M_j, their head mean, the mean and std of
  the block) plus the group calls with a boolean mask, which the fused CPU kernel runs slower than unmasked ones.
- The dense reference is 3-7x: one L x L matmul, two softmaxes over [H, L, L] and the full P V.
- Memory: per call, the memory-bounded edit adds 30-80 MB to the plain call (the edited keys per group, the image
  blocks), and the scores pass one 128 MiB logits chunk (`CHUNK_ELEMENTS`) at most; the dense reference adds
  0.3-1.3 GB. The process here holds only torch, q, k and v, so its ratios are a worst case: inside a sampling run
  the model's weights and activations are the denominator (see deleaker.md for whole-sampling peaks)."""


def entity_positions(family: Family) -> tuple[tuple[int, ...], ...]:
    starts, at = [], 0
    for length in family.text:
        starts.append(at + (length - PROMPT_TOKENS if family.prompt_at_end else 0))
        at += length
    return tuple(tuple(s + w for s in starts for w in words) for words in WORDS)


def planted_masks(torch):
    """[1, 2, N] bool: two discs of radius 9 (about 25% of the 32x32 grid each) that overlap a little."""
    h, w = GRID
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    discs = [((y - 16) ** 2 + (x - cx) ** 2 <= 81).flatten() for cx in (10, 23)]
    return torch.stack(discs)[None]


def sdpa(q, k, v, mask=None):
    """Plain attention, as ComfyUI's optimized attention returns it: [b, H, Lq, D] -> [b, Lq, H*D]."""
    import torch.nn.functional as F

    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def dense_edit(q, k, v, masks, layout, st):
    """The reference processor's edit (tokeron/DeLeaker) with full B x H x L x L fp32 logits, as the official code
    computes it: per entity pair, cross image->text blocked, self image->text logits x alpha (once per entity),
    image->image blocked above mean + beta2 * std of the head-mean probabilities on M_i x M_j, re-softmax."""
    import math

    import torch

    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    p = s.softmax(-1)
    img = layout.img
    s_img = s[:, :, img]  # a view: edits on it edit s
    text_cols = [torch.zeros(s.shape[-1], dtype=torch.bool).index_fill_(0, layout.entity_index(e, "cpu"), True)
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
                    cols = layout.entity_index(e, "cpu")
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


def calls(name: str, dl, torch):
    """{configuration: a function running one attention call} for one family, and a check value: the largest
    difference between the memory-bounded edit and the dense reference."""
    fam = FAMILIES[name]
    n = GRID[0] * GRID[1]
    g = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(1, fam.heads, n + fam.txt_len, fam.head_dim, generator=g) for _ in range(3))
    layout = dl.Layout(fam.txt_len, GRID, entity_positions(fam))
    masks = planted_masks(torch)
    every, no_ii = dl.Settings(), dl.Settings(image_image=False)
    plans = {st: [dl.MaskPlan(masks[0], st)] for st in (every, no_ii)}  # after the history: made once per run
    history = dl.MaskHistory()

    def history_pass(q, k, v):
        history.update(dl.scores_and_image_probs(q, k, layout, image_probs=False)[0])
        return sdpa(q, k, v)

    def history_and_edits(q, k, v):  # inside the history window once intervening: masks and plan every call
        scores, probs = dl.scores_and_image_probs(q, k, layout, image_probs=True)
        history.update(scores)
        dl.entity_masks(history.mean, layout, every)  # its cost; the edit uses the planted masks
        plan = [dl.MaskPlan(masks[0], every)]
        return dl.deleaker_attention(q, k, v, sdpa, plan, layout, every, [0], None, probs)

    def heatmap(q, k, v):
        dl.entity_scores(q, k, layout)
        return sdpa(q, k, v)

    text_first = {
        "history": history_pass,
        "history + all edits": history_and_edits,
        "all edits": lambda q, k, v: dl.deleaker_attention(q, k, v, sdpa, plans[every], layout, every, [0]),
        "no image-image": lambda q, k, v: dl.deleaker_attention(q, k, v, sdpa, plans[no_ii], layout, no_ii, [0]),
        "image-image statistics": lambda q, k, v: dl.image_image_blocks(q[0], k[0], plans[every][0], layout, every),
        "heatmap": heatmap,
        "dense reference": lambda q, k, v: dense_edit(q, k, v, masks, layout, every),
    }
    if fam.image_first:  # the same tensors in the call's own order; the glue permutes them and the output
        q, k, v = (torch.cat([x[:, :, fam.txt_len:], x[:, :, :fam.txt_len]], dim=2) for x in (q, k, v))

        def permuted(fn):
            def run():
                to_text_first = (torch.cat([x[:, :, n:], x[:, :, :n]], dim=2) for x in (q, k, v))
                out = fn(*to_text_first)
                if not isinstance(out, torch.Tensor):  # the image-image statistics: no output to permute
                    return out
                return torch.cat([out[:, fam.txt_len:], out[:, :fam.txt_len]], dim=1)
            return run

        runs = {c: permuted(fn) for c, fn in text_first.items()}
    else:
        runs = {c: (lambda fn=fn: fn(q, k, v)) for c, fn in text_first.items()}
    runs = {"plain": lambda: sdpa(q, k, v), **runs}
    check = float((runs["all edits"]() - runs["dense reference"]()).abs().max())
    return {c: runs[c] for c in CONFIGS}, check


def load(threads=None):
    import torch

    torch.set_num_threads(threads or os.cpu_count())
    import_pack_as("leakless")
    import leakless.nodes.deleaker as dl

    return dl, torch


def memory(name: str):
    """One family's per-call peaks, printed as one JSON line (run in its own process by measure_memory)."""
    dl, torch = load()
    runs, _ = calls(name, dl, torch)
    for fn in runs.values():
        fn()  # warm-up: caches of the layout and plans, as from the second call of a run on
    out = {}
    for config in (*CONFIGS, "plain"):  # plain twice, first and last: the two should agree
        peak, added = peak_rss_during(runs[config])
        out[config if config not in out else "plain again"] = dict(peak=peak, added=added)
    print(json.dumps(out))


def measure_memory(names) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = {}
    for name in names:
        r = subprocess.run([sys.executable, __file__, "--memory", name], capture_output=True, text=True, env=env)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise SystemExit(r.stderr[-3000:])
        results[name] = json.loads(lines[-1])
        print(name, "memory done", flush=True)
    return results


def measure_time(rounds: int, budget_s: float, warm_up=True, names=tuple(FAMILIES)):
    """{family: {configuration: [seconds per round]}}, {family: check}; stops after `rounds`, or earlier once
    `budget_s` is spent (but not before MIN_ROUNDS)."""
    dl, torch = load()
    families = {name: calls(name, dl, torch) for name in names}
    times = {name: {c: [] for c in CONFIGS} for name in names}
    for runs, _ in families.values() if warm_up else ():
        for fn in runs.values():
            fn()
    start = time.perf_counter()
    for r in range(rounds):
        if r >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
            break
        for name, (runs, _) in families.items():
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            for config in order if r % 2 else reversed(order):
                t = time.perf_counter()
                runs[config]()
                times[name][config].append(time.perf_counter() - t)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return times, {name: check for name, (_, check) in families.items()}


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    lo, mid, hi = statistics.quantiles(xs, n=4, method="inclusive")
    return lo, mid, hi


def report(times, checks, mem, write=True):
    import torch

    ratio = {name: {c: quartiles([t / p for t, p in zip(ts[c], ts["plain"], strict=True)]) for c in CONFIGS}
             for name, ts in times.items()}
    shown = CONFIGS[1:]
    masks = planted_masks(torch)[0]
    sizes, overlap = " and ".join(str(int(m.sum())) for m in masks), int((masks[0] & masks[1]).sum())
    rounds = len(next(iter(times.values()))["plain"])
    lines = [
        "# DeLeaker and heatmap cost per attention call, at each family's real size",
        "",
        f"Machine: {platform.machine()} ({_cpu()}), {os.cpu_count()} cores shared with other work (timings are noisy),"
        f" Python {platform.python_version()}, torch {torch.__version__}, fp32 on the CPU, "
        f"{torch.get_num_threads()} threads; load average (1/5/15 min) at the end: "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}. Reproduce: `python bench/bench_attention_calls.py` "
        "(also `make bench`).",
        "",
        "One attention call with random q/k/v (seed 0) at 512x512 px: 1024 image tokens (32x32) and the family's "
        f"text rows, two entities of two tokens in every text segment, planted masks (two discs of {sizes} image "
        f"tokens, about 25% of the image each, overlapping on {overlap}). Configurations:",
        "",
        "- **plain**: `scaled_dot_product_attention` on [1, H, L, D] and the reshape to [1, L, H*D] (the model's "
        "own attention; every ratio is over it);",
        "- **history**: a block in the mask-history window before DeLeaker intervenes: `scores_and_image_probs` "
        "(entity scores only) and the history's running mean, plus plain attention;",
        "- **history + all edits**: a block in the history window once DeLeaker intervenes (the first 60% of the "
        "steps): scores and the first pair's image probabilities, masks from the history (`entity_masks`), a new "
        "`MaskPlan` (the masks change every call there), and `deleaker_attention` with every edit;",
        "- **all edits**: after the history window: `deleaker_attention` (cross text, self text, image-image) with "
        "the run's `MaskPlan`, made once;",
        "- **no image-image**: the same with `image_image=False`;",
        "- **image-image statistics**: `image_image_blocks` alone (the part of *all edits* that finds the "
        "image-image blocks; no attention output);",
        "- **heatmap**: what the heatmap patch adds to a call: `entity_scores` on the image rows, plus plain "
        "attention;",
        "- **dense reference**: the edit of *all edits* with full 1 x H x L x L fp32 logits, as the official code "
        "computes it (`dense_edit` in this file).",
        "",
        "HiDream's call is image first: its non-plain configurations include permuting q, k, v to text first and "
        "the output back, as the glue will. Timing: after a warm-up call of each, "
        f"{rounds} rounds, each running every configuration of every family once (order rotated and reversed "
        "round to round); x plain = median of the per-round ratios to that round's plain call, with the "
        "quartiles (IQR). Memory: 'added' = the resident high-water mark during the call minus the memory resident "
        "before it (q, k, v, torch itself), in a process of its own per family with glibc's mmap threshold "
        "fixed at 64 KiB (freed tensors leave the resident set at once), after one warm-up call of each "
        "configuration; 'process' = the whole process's peak, torch's runtime and the inputs included.",
        "",
        "## Time per call",
        "",
        "| family | H x D | L (text + image) | plain | " + " | ".join(shown) + " | max abs diff, all edits vs dense |",
        "|---|---|---:|---:|" + "---:|" * len(shown) + "---:|",
    ]
    for name, fam in ((n, FAMILIES[n]) for n in times):
        plain_ms = statistics.median(times[name]["plain"]) * 1e3
        cells = [f"{ratio[name][c][1]:.2f}x ({ratio[name][c][0]:.2f}–{ratio[name][c][2]:.2f})" for c in shown]
        lines.append(f"| {name} | {fam.heads} x {fam.head_dim} | {fam.txt_len} + 1024 | {plain_ms:.0f} ms | "
                     + " | ".join(cells) + f" | {checks[name]:.1e} |")
    lines += ["", "## Peak memory per call", "",
              "Added by the call, MB (x plain's added); then the whole process's peak (torch's runtime, q, k, v "
              "and the call) over plain's, for the configurations the memory target is about.", "",
              "| family | " + " | ".join(CONFIGS) + " | plain again | process peak x plain: all edits / no "
              "image-image / history + all edits / heatmap / dense |", "|---|" + "---:|" * (len(CONFIGS) + 2)]
    for name, m in mem.items():
        base, peak = m["plain"]["added"], m["plain"]["peak"]
        cells = [f"{base:.0f}"] + [f"{m[c]['added']:.0f} ({m[c]['added'] / base:.1f}x)" for c in CONFIGS[1:]]
        peaks = " / ".join(f"{m[c]['peak'] / peak:.2f}" for c in
                           ("all edits", "no image-image", "history + all edits", "heatmap", "dense reference"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['plain again']['added']:.0f} | {peaks} |")
    lines += ["", "## Against issue 14's targets (per call)", "",
              "| family | all edits <= 1.20x | no image-image <= 1.05x | process peak <= 1.05x (all edits) "
              "| all edits / dense reference (time) |", "|---|---|---|---|---:|"]
    for name in times:
        def verdict(x, limit, digits=2):
            return f"{'met' if x <= limit else 'not met'} ({x:.{digits}f}x)"

        over_dense = quartiles([a / d for a, d in zip(times[name]["all edits"], times[name]["dense reference"],
                                                      strict=True)])[1]
        mem_cell = verdict(mem[name]["all edits"]["peak"] / mem[name]["plain"]["peak"], 1.05, 3) if name in mem else ""
        lines.append(f"| {name} | {verdict(ratio[name]['all edits'][1], 1.20)} | "
                     f"{verdict(ratio[name]['no image-image'][1], 1.05)} | {mem_cell} | {over_dense:.2f} |")
    lines += ["", NOTES]
    lines += ["", "## Where the dimensions come from (ComfyUI 0.33.0)", ""]
    lines += [f"- {name}: {fam.heads} heads x {fam.head_dim}, text {' + '.join(map(str, fam.text))} rows"
              f"{', image first' if fam.image_first else ''}{', left-padded' if fam.prompt_at_end else ''}: "
              f"{fam.source}." for name, fam in FAMILIES.items()]
    if write:
        (REPO / "bench" / "results" / "attention_calls.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--memory":
        return memory(sys.argv[2])
    if "--quick" in sys.argv:  # text first and image first, every configuration timed once, cold
        mem = measure_memory(["FLUX.1 dev"])
        times, checks = measure_time(1, 0, warm_up=False, names=("FLUX.1 dev", "HiDream I1"))
        return report(times, checks, mem, write=False)
    mem = measure_memory(FAMILIES)
    times, checks = measure_time(ROUNDS, BUDGET_S)
    report(times, checks, mem)


if __name__ == "__main__":
    main()
