"""Sampling state owned by the run (nodes/driver/patching.py): no stale state between runs or graphs that share one
patched model, DeLeaker Masks tied to the run that made the images, ComfyUI 0.33.0's ModelAttentionBackend and
multi-GPU CFG split. Real graphs through one PromptExecutor kept across prompts, as the server keeps it."""

import asyncio
import copy
import threading
import uuid

import comfy_env
import pytest
import torch
from test_deleaker import deleak
from test_deleaker import parts as parts  # noqa: F401  (the tiny FLUX fixture)
from test_deleaker import sample as flux_sample
from workflows.examples import EXAMPLES, shrink

MULTIGPU = (comfy_env.COMFY_DIR / "comfy" / "multigpu.py").exists()  # 0.33.0's multi-GPU work units


class Session:
    """One PromptExecutor for several prompts: node outputs are cached between them, as in the server."""

    def __init__(self):
        import execution

        comfy_env.load_all_nodes()
        self.executor = execution.PromptExecutor(comfy_env.HeadlessServer(), cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})

    def run(self, prompt: dict) -> tuple[dict, set]:
        """(history outputs by node id, the ids of the nodes that were cached rather than run). The nodes that
        failed validation (their outputs are left out, as the server does) are in self.node_errors."""
        import execution

        pid = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise comfy_env.ExecutionFailed(f"invalid prompt: {valid[1]} {valid[3]}")
        self.node_errors = valid[3]
        asyncio.run(self.executor.execute_async(prompt, pid, {}, valid[2]))
        if not self.executor.success:
            errors = [m for m in self.executor.status_messages if m[0] == "execution_error"]
            raise comfy_env.ExecutionFailed(errors[0][1] if errors else self.executor.status_messages)
        cached = {n for event, data in self.executor.status_messages if event == "execution_cached"
                  for n in data["nodes"]}
        return self.executor.history_result["outputs"], cached


def deleaker_graph(width=64, height=64, batch=1, steps=2, opacity=0.45, samples=True):
    """The shipped DeLeaker example at a test size, with the sampler's latent saved. ModelSamplingFlux keeps one
    size, so graphs of different sizes share the DeLeaker node's patched model when run one after another."""
    g = shrink(EXAMPLES["flux_deleaker"](), size=64, steps=steps)
    g["27"]["inputs"].update(width=width, height=height, batch_size=batch)
    g["62"]["inputs"]["opacity"] = opacity
    if not samples:
        del g["62"]["inputs"]["samples"]
    g["70"] = {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": "run_state"}}
    return g


def saved_latent(outputs) -> torch.Tensor:
    import folder_paths
    import safetensors.torch

    entry = outputs["70"]["latents"][0]
    path = f"{folder_paths.get_output_directory()}/{entry['subfolder']}/{entry['filename']}"
    return safetensors.torch.load_file(path)["latent_tensor"]


def test_alternating_graphs_that_share_the_patched_model_give_their_own_output(comfy_nodes):
    """Two graphs with the same DeLeaker node (so the same patched model, cached between prompts) at other sizes,
    batch sizes and step counts, run in turn: each gives exactly what it gives alone, with masks of its size."""
    a, b = deleaker_graph(64, 64, 1, 3), deleaker_graph(96, 64, 2, 2)
    alone = [saved_latent(Session().run(g)[0]) for g in (a, b)]
    session = Session()
    for i, g in enumerate([a, b, a, b]):
        outputs, cached = session.run(g)
        assert torch.equal(saved_latent(outputs), alone[i % 2])
        if i:
            assert "61" in cached and "13" not in cached  # the same patched model, a new sampling
        assert len(outputs["63"]["images"]) == g["27"]["inputs"]["batch_size"]  # the masks' overlay ran


def test_masks_follow_the_sampler_result_even_when_it_is_cached(comfy_nodes):
    session = Session()
    session.run(deleaker_graph())
    outputs, cached = session.run(deleaker_graph(opacity=0.2))  # only the Masks node runs again
    assert {"13", "61"} <= cached and outputs["63"]["images"]
    with pytest.raises(comfy_env.ExecutionFailed, match=r"Leakless DeLeaker Masks: input 'samples': no sampling "
                       r"with this Leakless DeLeaker model ran in this run of the workflow.*Fix: connect the LATENT"):
        session.run(deleaker_graph(opacity=0.3, samples=False))


def test_masks_without_a_sampling_or_with_deleaker_bypassed_are_an_error(comfy_nodes):
    session = Session()
    session.run(deleaker_graph())  # masks of a real run exist from here on
    before = deleaker_graph(samples=False)  # asked before (without) any sampling in this prompt
    before["62"]["inputs"]["images"] = ["80", 0]
    before["80"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}
    for node in ("8", "9", "13", "70"):
        del before[node]
    with pytest.raises(comfy_env.ExecutionFailed, match="input 'samples': no sampling with this Leakless DeLeaker"):
        session.run(before)
    other = copy.deepcopy(before)
    other["62"]["inputs"]["samples"] = ["27", 0]  # an empty latent, not a sampler's
    with pytest.raises(comfy_env.ExecutionFailed, match="input 'samples': these latents were not made by a sampler"):
        session.run(other)
    # bypassed: the frontend removes the node and links its MODEL input through; 'masks' has no input of its type,
    # so ComfyUI reports the Masks node and leaves its output out (the rest of the workflow runs)
    bypassed = deleaker_graph()
    bypassed["22"]["inputs"]["model"] = bypassed["61"]["inputs"]["model"]
    del bypassed["61"], bypassed["62"]["inputs"]["masks"]
    outputs, _ = session.run(bypassed)
    assert "63" not in outputs and outputs["9"]["images"]
    assert "Required input is missing" in repr(session.node_errors["62"]) and "masks" in repr(session.node_errors)
    off = deleaker_graph()
    del off["61"]["inputs"]["entities"]  # DeLeaker off: the model passes through, there are no masks
    with pytest.raises(comfy_env.ExecutionFailed, match="input 'masks': Leakless DeLeaker made no masks"):
        session.run(off)


def test_masks_are_those_of_the_run_that_made_the_samples(parts):
    patched, results = deleak(parts)
    masks_node = parts["m"]["LeaklessDeLeakerMasks"]
    first = flux_sample(parts, patched, w=256, h=192)
    second = flux_sample(parts, patched, batch=2, w=128, h=256)
    for latent, grid in ((first, (12, 16)), (second, (16, 8))):
        images = torch.rand(latent.shape[0], latent.shape[2] * 8, latent.shape[3] * 8, 3)
        mask, _ = masks_node.execute(masks=results, images=images, opacity=0.5, samples={"samples": latent}).args
        run = results.find(masks_node.NAME, {"samples": latent})
        assert run.value.grid == grid and mask.shape == (latent.shape[0] * 2, *images.shape[1:3])
    with pytest.raises(ValueError, match="input 'samples': 2 samplings used this Leakless DeLeaker model"):
        masks_node.execute(masks=results, images=torch.rand(2, 256, 128, 3), opacity=0.5)
    with pytest.raises(ValueError, match=r"input 'images': 1 image\(s\) of 128x256 px do not match"):
        masks_node.execute(masks=results, images=torch.rand(1, 256, 128, 3), opacity=0.5,
                           samples={"samples": second})


def test_tome_alternating_sizes_batches_and_steps_give_their_own_output(comfy_nodes, leakless):
    """One ToMe-patched model sampled in turn at other sizes, batch sizes and step counts: each run gives exactly
    what a fresh patch gives, and each run had its own state."""
    from leakless.nodes.driver import patching
    from test_tome import ENCODE, GROUPS
    from test_tome import TEXT as TOME_TEXT

    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")
    cond, binding = m["LeaklessToMeEncode"].execute(clip=clip, text=TOME_TEXT, groups=GROUPS, **ENCODE).args
    negative = nodes.CLIPTextEncode().encode(clip, "low res")[0]
    settings = dict(steps_fraction=0.5, entropy_iterations=1, semantic_iterations=1, semantic_lr=1e4,
                    entropy_step=3.0, pose_prior=False)

    def bind():
        return m["LeaklessToMeSemanticBinding"].execute(model=model, binding=binding, **settings).args[0]

    def go(patched, batch, w, h, steps):
        latent = {"samples": torch.zeros(batch, 4, h // 8, w // 8)}
        return nodes.KSampler().sample(patched, 3, steps, 5.0, "euler", "normal", cond, negative, latent)[0]["samples"]

    configs = [(1, 64, 64, 2), (2, 96, 64, 3)]
    alone = [go(bind(), *c) for c in configs]
    shared, runs = patching.watch(bind(), "leakless_tome")
    for i in range(4):
        assert torch.equal(go(shared, *configs[i % 2]), alone[i % 2])
    assert len({id(r) for r in runs}) == 4 and [sorted(r.done) for r in runs] == [[0], [0, 1], [0], [0, 1]]


def test_stacked_deleakers_keep_their_own_state(parts):
    once, _ = deleak(parts)
    twice, results = deleak(parts, model=once, mask_threshold=0.0)
    out = flux_sample(parts, twice)
    assert torch.isfinite(out).all() and not torch.equal(out, flux_sample(parts, once))
    assert results.last.value.masks.shape == (1, 2, 12 * 16)


@pytest.mark.skipif(not MULTIGPU, reason="ModelAttentionBackend is new in ComfyUI 0.33.0")
def test_model_attention_backend_after_deleaker_is_an_error_and_before_is_chained(parts):
    backend = parts["m"]["ModelAttentionBackend"]()
    patched, _ = deleak(parts)
    after = backend.patch(patched, "pytorch attention")[0]
    with pytest.raises(ValueError, match=r"Leakless DeLeaker: input 'model': its attention patch did not run.*"
                       r"ModelAttentionBackend.*Fix: place ModelAttentionBackend .*before Leakless DeLeaker"):
        flux_sample(parts, after)
    chosen = backend.patch(parts["model"], "pytorch attention")[0]
    before, results = deleak(parts, model=chosen)
    out = flux_sample(parts, before)
    assert torch.isfinite(out).all() and not torch.equal(out, flux_sample(parts, chosen))
    assert results.last is not None


@pytest.fixture
def multigpu():
    """ComfyUI's comfy.multigpu, new in 0.33.0: importing it is these tests' skip condition, so they skip on a
    ComfyUI without it."""
    return pytest.importorskip("comfy.multigpu", reason="multi-GPU work units are new in ComfyUI 0.33.0")


def _split(patcher, threads: bool, multigpu=None):
    """A clone of `patcher` sampled by 0.33.0's multi-GPU work units on two CPU 'devices': cond on one, uncond on
    the other, each in its own worker thread (threads=True: `multigpu` is comfy.multigpu) or one after the other
    on the main thread."""
    devices = [torch.device("cpu"), torch.device("cpu", 0)]
    split = patcher.clone()
    split.model_options["multigpu_clones"] = {devices[0]: split, devices[1]: split.clone()}
    if threads:  # ComfyUI shuts the pool down after the sampling
        split.model_options["multigpu_thread_pool"] = multigpu.MultiGPUThreadPool(devices)
    return split


def test_multigpu_cfg_split_runs_deleaker_in_threads_without_a_race(parts, multigpu):
    """The real _calc_cond_batch_multigpu: cond and uncond model calls at the same time in two threads (a barrier
    holds each inside the model until the other is there) give the same result as the same calls in turn."""
    import comfy.patcher_extension as ext

    negative = parts["nodes"].CLIPTextEncode().encode(parts["clip"], "blurry, low quality")[0]
    patched, results = deleak(parts)
    in_turn = flux_sample(parts, _split(patched, threads=False), negative=negative, cfg=3.0)
    masks_in_turn = results.last.value.masks
    together = _split(patched, threads=True, multigpu=multigpu)
    barrier, seen = threading.Barrier(2, timeout=60), set()

    def meet(executor, *args, **kwargs):  # inside DeLeaker's wrapper: both calls of a step are in flight at once
        seen.add(threading.get_ident())
        barrier.wait()
        return executor(*args, **kwargs)

    together.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_meet", meet)
    out = flux_sample(parts, together, negative=negative, cfg=3.0)
    assert len(seen) == 2 and threading.main_thread().ident not in seen
    assert torch.equal(out, in_turn) and torch.equal(results.last.value.masks, masks_in_turn)
    assert not torch.equal(out, flux_sample(parts, parts["model"], negative=negative, cfg=3.0))


def test_multigpu_cfg_split_is_refused_by_tome(comfy_nodes, multigpu):
    from test_tome import BIND, ENCODE, GROUPS
    from test_tome import TEXT as TOME_TEXT

    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")
    cond, binding = m["LeaklessToMeEncode"].execute(clip=clip, text=TOME_TEXT, groups=GROUPS, **ENCODE).args
    patched = m["LeaklessToMeSemanticBinding"].execute(model=model, binding=binding, **BIND).args[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(ValueError, match=r"Leakless ToMe Semantic Binding: input 'model': .*MultiGPU CFG Split.*"
                       r"Fix: remove MultiGPU CFG Split"):
        nodes.KSampler().sample(_split(patched, threads=False), 3, 2, 5.0, "euler", "normal", cond,
                                nodes.CLIPTextEncode().encode(clip, "low res")[0], latent)



def test_a_cache_node_after_deleaker_that_skips_model_calls_is_not_an_error(parts):
    """EasyCache after DeLeaker reuses outputs for some steps without calling the model (so DeLeaker's attention
    never runs in those calls): that is not a lost override, and DeLeaker still edits the calls that do run."""
    import comfy.patcher_extension as ext

    patched, results = deleak(parts)
    cached = parts["m"]["EasyCache"].execute(patched, reuse_threshold=5.0, start_percent=0.0, end_percent=1.0,
                                             verbose=False)[0]
    calls = []

    def count(executor, *args, **kwargs):  # innermost: runs only where EasyCache calls the model
        calls.append(1)
        return executor(*args, **kwargs)

    cached.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_count", count)
    latent = {"samples": torch.zeros(1, 16, 24, 32)}
    steps = 8
    out = parts["nodes"].KSampler().sample(cached, 7, steps, 1.0, "euler", "simple", parts["cond"], parts["cond"],
                                           latent)[0]["samples"]
    assert torch.isfinite(out).all()
    assert 0 < len(calls) < steps  # EasyCache skipped some model calls
    assert results.last is not None
