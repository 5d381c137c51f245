"""ToMe cost: sampling time and peak memory, ToMe / plain SDXL sampling, and model passes per optimized step.

    .cache/venv/bin/python bench/bench_tome.py        (also part of `make bench`)

CPU: a mid-size random-weight SDXL-shaped UNet built in memory with ComfyUI's classes (3 levels, 64 channels,
transformer depth 0/2/4 down, 4 in the middle, 4 per output block of the lowest level, 64-channel heads), the tiny
SDXL text encoders, 384x384 px, 50 Euler steps, CFG 7.5, batch 1 (the reference settings but the model size).
Each configuration runs in its own process so peak memory (max RSS) is its own. Writes bench/results/tome.md.
SDXL dimensions at 1024x1024 on a GPU need a lent GPU machine: not measured here.
"""

import json
import platform
import resource
import statistics
import sys
import time

from common import REPO, run_each_in_own_process

PROMPT = "a cat wearing sunglasses and a dog wearing a hat"
GROUPS = "cat: wearing sunglasses; dog: wearing a hat"
SIZE, STEPS, CFG = 384, 50, 7.5
ROUNDS = 2
CONFIGS = {
    "plain": None,
    "merge + end-token substitution only": dict(steps_fraction=0.0),
    "reference (20% of steps, 6 entropy, 3 semantic)": dict(steps_fraction=0.2, entropy_iterations=6,
                                                            semantic_iterations=3),
    "fast (10%, 1 entropy, 1 semantic)": dict(steps_fraction=0.1, entropy_iterations=1, semantic_iterations=1),
    "fast, entropy only (10%, 1 entropy)": dict(steps_fraction=0.1, entropy_iterations=1, semantic_iterations=0),
}
DEFAULTS = dict(steps_fraction=0.2, entropy_iterations=6, semantic_iterations=3, semantic_lr=1e4, entropy_step=3.0,
                pose_prior=False)


def setup():
    import comfy_env
    import tiny_models

    nodes = comfy_env.import_comfy()
    tiny_models.write_all(str(comfy_env.BASE / "models"))
    comfy_env.load_all_nodes()
    import comfy.supported_models
    import torch

    torch.set_num_threads(2)
    cfg = tiny_models.sdxl_cfg(mc=64, mult=(1, 2, 4), nres=(2, 2, 2), td=(0, 0, 2, 2, 4, 4),
                               tdo=(0, 0, 0, 2, 2, 2, 4, 4, 4), mid=4, head_ch=64)
    model = tiny_models.build_unet(comfy.supported_models.SDXL, cfg)
    patcher = tiny_models.patcher(model)
    clip = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")[1]
    return nodes, patcher, clip


def run_config(name):
    nodes, patcher, clip = setup()
    import comfy.sample
    import torch

    m = nodes.NODE_CLASS_MAPPINGS
    settings = CONFIGS[name]
    negative = nodes.CLIPTextEncode().encode(clip, "low res, ugly, blurry, artifact, unreal")[0]
    if settings is None:
        positive, used = nodes.CLIPTextEncode().encode(clip, PROMPT)[0], patcher
    else:
        positive, binding = m["LeaklessToMeEncode"].execute(
            clip=clip, text=PROMPT, groups=GROUPS, noun_weight=1.1, attribute_weight=1.2,
            end_token_substitution=0.0, clean_prompt="").args
        used = m["LeaklessToMeSemanticBinding"].execute(model=patcher, binding=binding,
                                                        **{**DEFAULTS, **settings}).args[0]
        if used is not patcher:  # each sampling run's ToMe state, for the pass counts
            from conftest import import_pack_as

            import_pack_as("leakless")
            from leakless.nodes.driver import patching

            used, runs = patching.watch(used, "leakless_tome")
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    noise = comfy.sample.prepare_noise(latent, 1)
    plain_positive = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]

    def go(model, pos, steps=STEPS):
        return comfy.sample.sample(model, noise, steps, CFG, "euler", "normal", pos, negative, latent,
                                   disable_pbar=True)

    go(used, positive, steps=5)  # warm-up
    ratios, times = [], []
    for _ in range(ROUNDS):  # interleaved with plain sampling, so machine noise hits both alike
        t = time.perf_counter()
        go(patcher, plain_positive)
        plain = time.perf_counter() - t
        t = time.perf_counter()
        go(used, positive)
        times.append(time.perf_counter() - t)
        ratios.append(times[-1] / plain)
    passes = None
    if used is not patcher:
        run = runs[-1]  # the last sampling
        passes = {k: v / len(run.done) for k, v in run.stats.items()} | {"steps": len(run.done)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"config": name, "seconds": statistics.median(times), "ratio": statistics.median(ratios),
                      "peak_mb": peak_mb, "passes": passes}))


SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False,
                 use_temporal_resblock=False)


def memory_estimate(size=1024):
    """GB kept for the backward pass by each kind of gradient pass on the real SDXL UNet in fp16, counted on the
    meta device (shapes only, nothing computed): autograd's saved tensors, each storage once, weights excluded.
    Attention saves q, k, v, its output and the log-sum-exp, as the fused GPU kernels do."""
    import comfy_env

    comfy_env.import_comfy()
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from conftest import import_pack_as

    import_pack_as("leakless")
    from leakless.nodes.methods.tome import cross_attention_probs
    from leakless.nodes.methods.tome_patch import MAP_LAYERS

    class EnoughMaps(Exception):
        pass

    def recorder(store):  # what the driver's runner does: record ToMe's maps, stop after the last
        def attn2(q, k, v, extra_options):
            store.append(cross_attention_probs(q, k, extra_options["n_heads"]))
            if len(store) == len(MAP_LAYERS):
                raise EnoughMaps
            import comfy.ldm.modules.attention as attention

            return attention.optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options)

        return attn2

    dtype = torch.float16
    unet = UNetModel(**SDXL_UNET, dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init)
    weights = {id(p) for p in unet.parameters()}

    class FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32))
            return out

    def attention(func, q, k, v, heads, **kwargs):
        b, _, inner = q.shape
        d = inner // heads
        qh, kh, vh = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        return FusedAttention.apply(qh, kh, vh).transpose(1, 2).reshape(b, -1, inner)

    def saved_gb(early_exit: bool, context: int) -> float:
        saved = {}

        def pack(t):
            if id(t) not in weights:
                saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        maps = []
        to = {"optimized_attention_override": attention}
        if early_exit:
            to["patches_replace"] = {"attn2": {k: recorder(maps) for k in MAP_LAYERS}}
        x = torch.empty(1, 4, size // 8, size // 8, device="meta", dtype=dtype, requires_grad=early_exit)
        ctx = torch.empty(1, context, 2048, device="meta", dtype=dtype, requires_grad=True)
        y = torch.empty(1, 2816, device="meta", dtype=dtype)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            try:
                unet(x, torch.empty(1, device="meta"), context=ctx, y=y, transformer_options=to)
            except EnoughMaps:
                pass
        return sum(saved.values()) / 2**30

    print(json.dumps({"config": "memory", "size": size,
                      "weights_gb": sum(p.numel() for p in unet.parameters()) * 2 / 2**30,
                      "entropy_gb": saved_gb(True, 77), "semantic_gb": saved_gb(False, 1),
                      "full_gb": saved_gb(False, 77)}))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--config":
        return memory_estimate() if sys.argv[2] == "memory" else run_config(sys.argv[2])
    if len(sys.argv) > 2 and sys.argv[1] == "--render":  # the table again from saved result lines
        return render({r["config"]: r for r in map(json.loads, open(sys.argv[2]))})
    render(run_each_in_own_process(__file__, [*CONFIGS, "memory"]))


def render(results):
    import torch

    base = results["plain"]
    lines = [
        "# ToMe semantic binding (SDXL)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, CPU, 2 "
        f"threads; median of {ROUNDS} runs after a warm-up; 'x plain' = median of the per-round ratios, each round "
        "timing plain sampling and the configuration back to back in one process (the 'plain' row times plain "
        "sampling against itself: its distance from 1.00 is this machine's noise); peak memory = max RSS of each "
        "configuration's own process (model and encoders included). Reproduce: `make bench`.",
        "Model: SDXL-shaped UNet, random weights, 3 levels, 64 channels, transformer depth 0/2/4 (down), 4 (middle), "
        f"4 per lowest-level output block, 64-channel heads; {SIZE}x{SIZE} px, {STEPS} Euler steps, CFG {CFG}, "
        "batch 1, two groups (cat, dog).",
        "",
        "| configuration | sampling time | x plain | peak memory | x plain | optimized steps | passes per optimized "
        "step |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in CONFIGS:
        r = results[name]
        p = r["passes"]
        passes = "" if not p else (f"{p['forward']:.1f} forward ({p['backward']:.1f} with backward)")
        lines.append(f"| {name} | {r['seconds']:.1f} s | {r['ratio']:.2f} | {r['peak_mb']:.0f} MB | "
                     f"{r['peak_mb'] / base['peak_mb']:.2f} | {p['steps'] if p else ''} | {passes} |")
    lines += [
        "",
        "Passes per optimized step, with G groups and B latents: 1 no-grad anchor pass (batch B x G) + each "
        "semantic iteration (B x G passes of one row, forward and backward, one-token context) + each entropy "
        "iteration (B passes of one row, forward up to output block 1's transformer block 3, then backward). The "
        "sampler's own call for the step (cond and uncond) is not counted: plain sampling makes it too. No pass is "
        "repeated: the anchors' prediction is computed once per step and reused by every semantic iteration; an "
        "entropy pass ends where the loss's last layer is. Gradient passes take one row each, so their memory does "
        "not grow with the batch or the number of groups.",
        "",
        "At this size output block 1 is 12x12, and the entropy of two composite-token maps cannot exceed the "
        "reference's thresholds (set for 32x32 maps at 1024x1024), so every entropy loop stops after its first "
        "update: the reference row shows 1 entropy pass per step where SDXL at 1024x1024 may run up to 6. One "
        "entropy pass (forward to output block 1, backward) costs about half a plain step here (the 'entropy "
        "only' row: 5 passes add 0.05x of 50 steps), so each extra entropy pass in all 10 optimized steps adds "
        "about 0.1x to the reference row: at most about 3.5x with all 6.",
    ]
    memory = results.get("memory")
    if memory:
        w, e, sem, full = (memory[k] for k in ("weights_gb", "entropy_gb", "semantic_gb", "full_gb"))
        lines += [
            "",
            f"## GPU memory at SDXL dimensions, {memory['size']}x{memory['size']} (estimated)",
            "",
            "No GPU was lent to this task, so this is counted, not measured: the real SDXL UNet (2.57 B parameters) "
            "in fp16 is run on PyTorch's meta device (shapes only) and autograd's saved tensors are summed, each "
            "storage once; attention is counted as the fused GPU kernels keep it (q, k, v, output, log-sum-exp).",
            "",
            "| what | GB |",
            "|---|---:|",
            f"| UNet weights (fp16) | {w:.1f} |",
            f"| kept for backward: one entropy pass (ends at output block 1) | {e:.1f} |",
            f"| kept for backward: one semantic pass (one row, one-token context) | {sem:.1f} |",
            f"| kept for backward: a whole-UNet pass, for comparison | {full:.1f} |",
            "",
            f"Weights plus the largest pass come to {w + max(e, sem):.1f} GB before the backward pass's own transient "
            "buffers: a 24 GB card holds the reference settings as they are. A 16 GB card does not: there the first "
            "gradient pass runs out of memory, and the node then keeps the saved activations in CPU memory "
            "(`torch.autograd.graph.save_on_cpu`) for the rest of the run, which leaves about the weights and one "
            "layer's activations on the GPU, at the cost of copying them over PCIe twice per pass.",
        ]
    lines += [
        "",
        "GPU timings at SDXL dimensions (1024x1024, reference settings): not measured, no GPU machine was lent to "
        "this task.",
    ]
    out = REPO / "bench" / "results" / "tome.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
