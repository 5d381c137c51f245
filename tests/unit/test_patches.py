"""The sampling-time methods as patches (nodes/methods/*_patch.py), driven by hand-made views of the contract
(nodes/methods/contract.py), never by ComfyUI: DeLeaker's windows, history and edits over a whole sampling against
the dense reference; the heatmap's window and means; ToMe's update rule against autograd on a small model of our
own; the errors each reports."""

import math
from types import SimpleNamespace

import pytest
import torch
from test_deleaker_pure import dense_attention, dense_scores


@pytest.fixture(scope="module")
def m(leakless):
    from leakless.nodes.methods import contract, deleaker, deleaker_patch, heatmap_patch, phrases, tome, tome_patch
    from leakless.nodes.registry import layout, models

    return SimpleNamespace(contract=contract, deleaker=deleaker, deleaker_patch=deleaker_patch,
                           heatmap_patch=heatmap_patch, phrases=phrases, tome=tome, tome_patch=tome_patch,
                           layout=layout, models=models)


def sdpa(q, k, v, mask):
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def model_call(m, step, steps, layout, rows=(0,), n_blocks=2, n_first=1, model="flux", batch=1):
    return m.contract.ModelCall(m.models.BY_ID[model], batch, rows, ("entry",), step, steps, layout, n_blocks, n_first)


def attention_call(m, generator, length, block, heads=2, d=8, batch=1, fused_is_model=False):
    """A main call; fused_is_model: the driver's verdict that the fused kernel is the model's attention (SDPA here)."""
    q, k, v = (torch.randn(batch, heads, length, d, generator=generator) for _ in range(3))
    return m.contract.AttentionCall(q, k, v, None, "main", block, attend=sdpa, verify=lambda: fused_is_model)


def test_schedule_is_the_reference_on_flux_and_its_fractions_elsewhere(m):
    by, schedule = m.models.BY_ID, m.deleaker_patch.Schedule.of
    flux = schedule(by["flux"], 57, 19, 20, 0.6)
    assert (flux.history_start, flux.history_end, flux.intervene_start) == (12, 684, 18)  # the reference's
    assert flux.history_steps() == 12 and flux.in_history(12) and not flux.in_history(684)
    assert not flux.intervenes(17) and flux.intervenes(18)
    assert schedule(by["flux"], 2, 1, 4, 0.5).intervene_start == 0  # FLUX: from the last double block
    qwen = schedule(by["qwen_image"], 60, 60, 20, 0.6)
    assert (qwen.history_start, qwen.intervene_start) == (13, 19)  # 12/57 and 18/57 of 60 blocks
    assert schedule(by["flux2"], 56, 8, 10, 0.6).intervene_start == 18  # FLUX.2: the fraction (see the README)


@pytest.mark.parametrize("fused_is_model", [False, True], ids=["separate-lse-pass", "fused-call"])
def test_deleaker_over_a_whole_sampling_matches_the_dense_reference(m, fused_is_model):
    """Three steps of two blocks: the history is the mean of the scores of steps 0-1 (block-steps 0-3), masks come
    from the scores of the block itself at the history's first block, from the history after it, frozen from step
    2 on; every call is edited from block-step 0 (FLUX: the first step's last double block). The scores come from
    the call's fused attention where the driver found it to be the model's, else from a pass of their own."""
    text, grid = 8, (4, 4)
    entities = ((1,), (3, 4))
    layout = m.layout.text_then_image(text, grid)
    st = m.deleaker.Settings(beta_text=0.0, smoothing=False)
    patch = m.deleaker_patch.DeLeakerPatch(m.phrases.Phrases(("cat", "dog"), entities, text), st, 0.6)
    run, g, history = patch.new_run({}), torch.Generator().manual_seed(3), []
    for step in range(3):
        state = patch.begin(run, model_call(m, step, 3, layout))
        for block in range(2):
            a = attention_call(m, g, text + 16, block, fused_is_model=fused_is_model)
            out = patch.attention(run, state, a)
            scores = dense_scores(a.q[0], a.k[0], text, 16, entities)
            if step < 2:
                history.append(scores)
            use = torch.stack(history).mean(0) if step or block else scores
            masks = use > use.mean(-1, keepdim=True) + 0.0 * use.std(-1, keepdim=True)
            ref = dense_attention(a.q[0], a.k[0], a.v[0], text, 16, entities, masks, st)
            assert torch.allclose(out[0].double(), ref.transpose(0, 1).reshape(text + 16, -1), atol=2e-5), (step, block)
    result = patch.finish(run, None)
    assert torch.equal(result.masks[0], masks) and result.grid == grid and result.names == ("cat", "dog")
    assert patch.begin(run, model_call(m, 0, 3, layout, rows=())) is None  # an uncond-only call: nothing to do


@pytest.mark.parametrize("fused_is_model", [False, True], ids=["separate-lse-pass", "fused-call"])
def test_image_first_calls_are_worked_in_the_models_order(m, fused_is_model):
    """An image-first call (HiDream): the driver hands the model's tensors with the canonical order; the patches
    work in the model's order (nothing reordered) and say so, and give what they give on the canonical call."""
    text, grid = 6, (4, 4)
    n = 16
    layout = m.layout.text_then_image(text, grid)
    order = torch.tensor(list(range(n, n + text)) + list(range(n)))  # canonical position -> the model's
    back = torch.argsort(order)
    st = m.deleaker.Settings(beta_text=0.0, smoothing=False)
    words = m.phrases.Phrases(("cat", "dog"), ((1,), (3, 4)), text)
    for make in (lambda: m.deleaker_patch.DeLeakerPatch(words, st, 0.6),
                 lambda: m.heatmap_patch.HeatmapPatch(words, (0.0, 1.0), (0.0, 1.0))):
        outs, results = [], []
        for image_first in (False, True):
            patch, g = make(), torch.Generator().manual_seed(9)
            run = patch.new_run({})
            for step in range(3):
                state = patch.begin(run, model_call(m, step, 3, layout))
                for block in range(2):
                    q, k, v = (torch.randn(1, 2, text + n, 8, generator=g) for _ in range(3))
                    if image_first:  # the same call as the model passes it
                        a = m.contract.AttentionCall(*(x.index_select(2, back) for x in (q, k, v)), None, "main",
                                                     block, attend=sdpa, order=order, verify=lambda: fused_is_model)
                    else:
                        a = m.contract.AttentionCall(q, k, v, None, "main", block, attend=sdpa,
                                                     verify=lambda: fused_is_model)
                    out = patch.attention(run, state, a)
                    assert not (image_first and 0 in a._memo)  # the patch never reordered q
                    if out is None:
                        out = sdpa(a.q, a.k, a.v, None)
                    elif image_first:
                        assert a.output_in_model_order
                        out = out.index_select(1, order)  # back to canonical, to compare
                    outs.append(out)
            results.append(patch.finish(run, None))
        half = len(outs) // 2
        for plain, reordered in zip(outs[:half], outs[half:], strict=True):
            assert torch.allclose(plain, reordered, atol=1e-5)
        first, second = (r.masks if hasattr(r, "masks") else r.maps for r in results)
        assert torch.allclose(first.float(), second.float(), atol=1e-6)


def test_deleaker_refuses_another_prompt_and_a_call_without_a_schedule(m):
    layout = m.layout.text_then_image(8, (4, 4))
    patch = m.deleaker_patch.DeLeakerPatch(m.phrases.Phrases(("cat", "dog"), ((1,), (3,)), 6), m.deleaker.Settings(),
                                           0.6)
    run, g = patch.new_run({}), torch.Generator().manual_seed(0)
    state = patch.begin(run, model_call(m, 0, 3, layout))  # 8 rows cannot hold a 6-row prompt
    with pytest.raises(m.contract.MethodError, match="has 8 rows, but the entities came from a prompt of 6"):
        patch.attention(run, state, attention_call(m, g, 24, 0))
    unscheduled = model_call(m, None, None, m.layout.text_then_image(6, (4, 4)))
    unscheduled.schedule_error = m.contract.MethodError("model", "no sigma schedule.")
    state = patch.begin(run, unscheduled)
    with pytest.raises(m.contract.MethodError, match="no sigma schedule"):
        patch.attention(run, state, attention_call(m, g, 22, 0))


def test_deleaker_read_only_history_blocks(m):
    """FLUX.1's schedule: blocks 12-17 of the first step are in the history window before the edits. There the
    patch returns the model's own output: nothing (the model's call) or, where the fused kernel is the model's, that
    kernel's output on the whole call, which is SDPA's bit for bit here; the history is the same either way."""
    text, grid = 6, (4, 4)
    layout = m.layout.text_then_image(text, grid)
    st = m.deleaker.Settings()
    histories = []
    for fused_is_model in (False, True):
        patch = m.deleaker_patch.DeLeakerPatch(m.phrases.Phrases(("cat", "dog"), ((1,), (3,)), text), st, 0.6)
        run, g = patch.new_run({}), torch.Generator().manual_seed(8)
        state = patch.begin(run, model_call(m, 0, 20, layout, n_blocks=57, n_first=19))
        for block in range(12, 18):
            a = attention_call(m, g, text + 16, block, fused_is_model=fused_is_model)
            out = patch.attention(run, state, a)
            if fused_is_model:
                assert torch.equal(out, sdpa(a.q, a.k, a.v, None))
            else:
                assert out is None
        histories.append(run.tracks[("entry",)].history)
    assert histories[0].count == histories[1].count == 6
    assert torch.allclose(histories[0].mean, histories[1].mean, atol=1e-6)


@pytest.mark.parametrize("fused_is_model", [False, True], ids=["separate-lse-pass", "fused-call"])
def test_heatmap_reads_its_window_and_leaves_every_call_alone(m, fused_is_model):
    """Reads only: where the fused kernel is the model's attention the patch returns that kernel's output on the
    call (SDPA's bits here) and reads the scores off its lse; elsewhere it returns nothing."""
    text, grid = 6, (3, 4)
    words = ((1, 2), (4,))
    layout = m.layout.text_then_image(text, grid)
    patch = m.heatmap_patch.HeatmapPatch(m.phrases.Phrases(("red cat", "sofa"), words, text), (0.5, 1.0), (0.5, 1.0))
    run, g, expected = patch.new_run({}), torch.Generator().manual_seed(1), []
    for step in range(4):
        state = patch.begin(run, model_call(m, step, 4, layout, n_blocks=4))
        assert (state is None) == (step < 2)
        for block in range(4):
            a = attention_call(m, g, text + 12, block, fused_is_model=fused_is_model)
            if state is not None:
                out = patch.attention(run, state, a)
                if fused_is_model and block >= 2:
                    assert torch.equal(out, sdpa(a.q, a.k, a.v, None))  # the model's own output, bit for bit
                else:
                    assert out is None  # reads only
                if block >= 2:
                    expected.append(dense_scores(a.q[0], a.k[0], text, 12, words))
    result = patch.finish(run, None)
    assert torch.allclose(result.maps[0].double(), torch.stack(expected).mean(0).reshape(2, *grid), atol=1e-6)
    assert result.window == (0, 0, *grid) and result.cell == (1, 1)


def test_heatmap_on_cross_attention_and_another_prompt(m):
    keys = m.layout.context_layout((1, 4, 6, 8), 77)  # a UNet's model call: 77 context rows
    patch = m.heatmap_patch.HeatmapPatch(m.phrases.Phrases(("cat",), ((5, 6),), 77, family="sdxl"), (0, 1), (0, 1))
    run = patch.new_run({})
    state = patch.begin(run, model_call(m, 0, 2, keys, model="sdxl", n_blocks=1))
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 2, 12, 8, generator=g), torch.randn(1, 2, 77, 8, generator=g), torch.randn(1, 2, 77, 8)
    call = m.contract.AttentionCall(q, k, v, None, "cross", 0, (3, 4), sdpa)  # a level at half the latent's size
    assert patch.attention(run, state, call) is None
    fused = m.contract.AttentionCall(q, k, v, None, "cross", 0, (3, 4), sdpa, verify=lambda: True)
    assert torch.equal(patch.attention(run, state, fused), sdpa(q, k, v, None))  # the model's output, its lse
    probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), -1)[0].mean(0)[:, [5, 6]].mean(-1)
    up = torch.nn.functional.interpolate(probs.reshape(1, 1, 3, 4).float(), size=(6, 8), mode="bilinear",
                                         align_corners=False)
    assert torch.allclose(patch.finish(run, None).maps, up, atol=1e-6)  # on the latent's grid (both calls')
    other = m.heatmap_patch.HeatmapPatch(m.phrases.Phrases(("cat",), ((5,),), 10, family="sdxl"), (0, 1), (0, 1))
    state = other.begin(other.new_run({}), model_call(m, 0, 2, keys, model="sdxl", n_blocks=1))
    with pytest.raises(m.contract.MethodError, match="not the one the words came from"):
        other.attention(None, state, call)


class TinyUNet:
    """A small differentiable model of our own for ToMe's ModelRunner: the latent's pixels are the image tokens,
    the context's rows the keys; its cross-attention maps and denoised prediction depend on both."""

    def __init__(self, x, context, sigma):
        g = torch.Generator().manual_seed(4)
        self.wq, self.wk = torch.randn(4, 8, generator=g), torch.randn(16, 8, generator=g)
        self.x, self.context, self.sigma, self.flags, self.per, self.cond = x, context, sigma, [1, 0], 1, slice(1, 2)
        self.sample_sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0])
        self.calls = []

    def probs(self, x, context):
        q = x.flatten(2).transpose(1, 2) @ self.wq  # [b, N, 8]
        return torch.softmax(q @ (context @ self.wk).transpose(1, 2) / math.sqrt(8), -1)  # [b, N, T]

    def cross_attention_maps(self, x, context, samples, layers, without_pooled=0):
        return [(self.probs(x, context), tuple(x.shape[-2:])) for _ in layers]

    def denoise(self, x, context, samples, without_pooled=0):
        return x * 0.5 + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    def run(self, x, context):
        self.calls.append((x, context))
        return x * 0.1

    def input_scale(self, sigma, like):
        return (1 / (sigma ** 2 + 1) ** 0.5).view(-1, *[1] * (like.dim() - 1)).expand_as(like)

    def check_interrupt(self):
        pass

    def progress(self, total):
        return SimpleNamespace(update=lambda n: None, update_absolute=lambda n: None)

    def free_memory(self):
        pass

    def too_small_for_one_image(self):
        return None


def test_tome_updates_follow_the_reference_rule(m):
    """One entropy iteration at step 0: the latent moves by 0.5 eta dL/dx / c_in^2 and the text rows by eta dL/dt
    (autograd on the same maps, here), the sampler's call gets both, and the output steps from the un-updated
    latent; at a step past the window the updated rows stay and the latent is the sampler's."""
    tome, tp = m.tome, m.tome_patch
    groups = (tome.Group((1,), (2,), "a red cat", "cat"), tome.Group((4,), (3,), "a blue dog", "dog"))
    merged = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(5))
    spec = tp.BindingSpec(groups, merged, None, 1.0, 5, torch.zeros(2, 6, 16), "sdxl")
    settings = tp.Settings(window=0.5, entropy_iterations=1, semantic_iterations=0)
    patch = tp.ToMePatch(spec, settings)
    run = patch.new_run({"cfg": 5.0})
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    unet = TinyUNet(x, merged.repeat(2, 1, 1), torch.tensor([2.0, 2.0]))
    out = patch.model_call(run, model_call(m, 0, 4, None, rows=(1,), model="sdxl", batch=2), unet)
    x_leaf, t_leaf = x[1:2].clone().requires_grad_(), merged.clone().requires_grad_()
    maps = unet.probs(x_leaf, t_leaf).view(1, 4, 4, -1)
    loss = tome.entropy_loss(maps, [1, 4], 5)
    gx, gt = torch.autograd.grad(loss.sum(), [x_leaf, t_leaf])
    eta, c_in = tome.step_size(0, 4), 1 / math.sqrt(5)
    x_in, context = unet.calls[-1]
    assert torch.allclose(x_in[1], x[1] - 0.5 * eta * gx[0] / c_in ** 2, atol=2e-4)  # float32 of ~10
    assert torch.equal(x_in[0], x_in[1])  # the uncond rows get the same step input
    assert torch.allclose(context[1], merged[0] - eta * gt[0], atol=2e-4)
    assert torch.equal(context[0], merged[0])  # the negative's rows are the sampler's
    assert torch.allclose(out, x_in * 0.1 + (x - x_in))
    later = patch.model_call(run, model_call(m, 3, 4, None, rows=(1,), model="sdxl", batch=2), unet)
    assert torch.equal(unet.calls[-1][0], x) and torch.equal(unet.calls[-1][1][1], context[1])
    assert torch.equal(later, x * 0.1) and run.done == {0}


def test_tome_refuses_another_positive_prompt(m):
    tome, tp = m.tome, m.tome_patch
    merged = torch.ones(1, 6, 16)
    spec = tp.BindingSpec((tome.Group((1,), (2,)),), merged, None, 1.0, 5, torch.zeros(1, 6, 16), "sdxl")
    patch = tp.ToMePatch(spec, tp.Settings())
    unet = TinyUNet(torch.zeros(2, 4, 4, 4), torch.zeros(2, 6, 16), torch.tensor([1.0, 1.0]))
    with pytest.raises(m.contract.MethodError, match="not the one from Leakless ToMe Encode"):
        patch.model_call(patch.new_run({}), model_call(m, 0, 4, None, rows=(1,), model="sdxl", batch=2), unet)
