"""Pure ToMe code: the merge and end-token substitution on synthetic SDXL-shaped tensors, the entropy loss against an
independent NumPy implementation, the schedules, group parsing on the real SDXL tokenizer, and autograd through
inference-mode weights."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tome(leakless):
    import leakless.nodes.methods.tome as tome

    return tome


def test_merge_weights_zeroed_rows_and_shape(tome):
    torch.manual_seed(0)
    cond = torch.randn(2, 154, 2048)  # two CLIP chunks, CLIP-L (768) || CLIP-G (1280)
    original = cond.clone()
    groups = [tome.Group((2,), (3, 4)), tome.Group((7, 8), (9,)), tome.Group((80,), (81, 82, 83))]
    out = tome.merge_tokens(cond, groups)
    assert torch.equal(cond, original)  # the input is not changed
    assert out.shape == cond.shape
    for g in groups:
        expected = 1.1 * original[:, list(g.noun)].sum(1) + 1.2 * original[:, list(g.attributes)].sum(1)
        assert torch.allclose(out[:, g.noun[0]], expected, atol=1e-5)
        assert not out[:, list(g.rows[1:])].any()
    kept = [i for i in range(154) if all(i not in g.rows for g in groups)]
    assert torch.equal(out[:, kept], original[:, kept])
    plain_sum = tome.merge_tokens(cond, groups[:1], 1.0, 1.0)
    assert torch.allclose(plain_sum[:, 2], original[:, 2:5].sum(1), atol=1e-5)


def test_end_token_substitution_row_range(tome):
    cond, clean = torch.randn(1, 77, 2048), torch.randn(1, 77, 2048)
    out = tome.substitute_end_tokens(cond, clean, 11)
    assert torch.equal(out[:, :11], cond[:, :11]) and torch.equal(out[:, 11:], clean[:, 11:])
    with pytest.raises(ValueError):
        tome.substitute_end_tokens(cond, torch.randn(1, 154, 2048), 11)


def numpy_entropy(maps, nouns, prompt_end, temperature=0.5):
    """The reference's _entropy_loss for one sample, written again with NumPy: maps [h, w, T]."""
    text = maps[:, :, 1:prompt_end] / temperature
    text = np.exp(text - text.max(-1, keepdims=True))
    text = text / text.sum(-1, keepdims=True)
    loss = 0.0
    for n in nouns:
        m = text[:, :, n - 1]
        m = (m - m.min()) / (m.max() - m.min())
        m = m / m.sum()
        loss += -2 * (m * np.log(m + 1e-5)).sum()
    return loss


def test_entropy_loss_matches_numpy(tome):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 12, 20, 77)).astype(np.float64)
    maps /= maps.sum(-1, keepdims=True)
    nouns, end = [2, 7], 11
    got = tome.entropy_loss(torch.from_numpy(maps), nouns, end)
    want = [numpy_entropy(m, nouns, end) for m in maps]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_constant_maps_do_not_divide_by_zero(tome):
    maps = torch.full((1, 8, 8, 77), 1 / 77, requires_grad=True)
    loss = tome.entropy_loss(maps, [2, 5], 9)
    loss.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(maps.grad).all()


def test_schedules_are_the_reference_configs(tome):
    assert [tome.step_size(i, 50) for i in (0, 49)] == [3.0, 0.0]
    np.testing.assert_allclose([tome.step_size(i, 50) for i in range(50)], 3 * np.linspace(1, 0, 50))
    # theta_i * K / 2 - 2 with the table for steps 0..9 of 50; by default at the step index, as the reference
    assert tome.entropy_threshold(0, 50, 2) == 24.0 and tome.entropy_threshold(9, 50, 2) == 19.0
    assert tome.entropy_threshold(2, 10, 2) == 22.0 and tome.entropy_threshold(10, 50, 2) == 19.0
    assert tome.entropy_threshold(1, 10, 3) == 25.0 * 3 / 2 - 2
    # the option: at the same fraction of a 50-step schedule
    assert tome.entropy_threshold(2, 10, 2, by_fraction=True) == tome.entropy_threshold(10, 50, 2) == 19.0
    assert tome.entropy_threshold(1, 10, 3, by_fraction=True) == 22.0 * 3 / 2 - 2  # step 1 of 10 = step 5 of 50


# The reference config's table, as a dict of step index -> theta (configs/demo_config.py)
REFERENCE_TABLE = {0: 26, 1: 25, 2: 24, 3: 23, 4: 22.5, 5: 22, 6: 21.5, 7: 21, 8: 21, 9: 21}


def reference_threshold(i, steps, groups, by_fraction):
    """Written for the test: the reference's `threshold = thresholds[i]; threshold = threshold / 2 * K; -= 2`,
    with the table entry of step i (the reference; it stops with a KeyError past step 9, here the last entry) or of
    step floor(i * 50 / steps) (the option)."""
    key = i * 50 // steps if by_fraction else i
    threshold = REFERENCE_TABLE.get(key, REFERENCE_TABLE[9])
    threshold = threshold / 2 * groups
    return threshold - 2


@pytest.mark.parametrize("steps", [4, 10, 20, 25, 30, 50, 80, 100])
def test_entropy_thresholds_both_schedules_against_the_reference(tome, steps):
    for groups in (1, 2, 3):
        for i in range(steps):
            want = reference_threshold(i, steps, groups, False)
            assert tome.entropy_threshold(i, steps, groups) == pytest.approx(want), (i, steps, groups)
            assert tome.entropy_threshold(i, steps, groups, by_fraction=False) == pytest.approx(want)
            assert tome.entropy_threshold(i, steps, groups, by_fraction=True) == \
                pytest.approx(reference_threshold(i, steps, groups, True)), (i, steps, groups)
    index = [tome.entropy_threshold(i, steps, 2) for i in range(10)]
    fraction = [tome.entropy_threshold(i, steps, 2, by_fraction=True) for i in range(10)]
    assert (index == fraction) == (steps == 50)  # the two agree exactly at the reference's 50 steps


def test_cross_attention_probs_against_dense(tome):
    torch.manual_seed(1)
    q, k = torch.randn(2, 30, 4 * 8), torch.randn(2, 77, 4 * 8)
    dense = torch.stack([torch.softmax(q[..., h * 8:(h + 1) * 8] @ k[..., h * 8:(h + 1) * 8].transpose(1, 2)
                                       / 8 ** 0.5, -1) for h in range(4)]).mean(0)
    assert torch.allclose(tome.cross_attention_probs(q, k, 4), dense, atol=1e-6)


def numpy_pose(maps, nouns, prompt_end, temperature=0.5):
    """The reference's pose term for one sample, written again with NumPy (maps [h, w, T]): each composite token's
    softmaxed map min-max normalised, get_centroid (linspace(0, 1) coordinates) times 32, then
    0.2 * mean((centroid - target)^2) per subject, targets (10, 16) and (25, 16), at any map size."""
    text = maps[:, :, 1:prompt_end] / temperature
    text = np.exp(text - text.max(-1, keepdims=True))
    text = text / text.sum(-1, keepdims=True)
    h, w = maps.shape[:2]
    loss = 0.0
    for n, target in zip(nouns, ((10.0, 16.0), (25.0, 16.0)), strict=True):
        m = text[:, :, n - 1]
        m = (m - m.min()) / (m.max() - m.min())
        attn_x, attn_y = m.sum(0), m.sum(1)
        cx = (np.linspace(0, 1, w) * attn_x).sum() / attn_x.sum()
        cy = (np.linspace(0, 1, h) * attn_y).sum() / attn_y.sum()
        loss += (0.2 * (np.array([cx, cy]) * 32 - np.array(target)) ** 2).mean()
    return loss


@pytest.mark.parametrize("h,w", [(32, 32), (16, 16), (12, 20), (48, 48)])
def test_pose_prior_matches_numpy_at_every_map_size(tome, h, w):
    """The reference formula at every map size: on a 16x16 map it is not 4x weaker (it was, in map pixels)."""
    rng = np.random.default_rng(h * w)
    maps = rng.random((2, h, w, 77)) * 3
    maps[0, : h // 2, : w // 3, 2] += 4  # a subject top left, so the centroids are not all near the middle
    nouns, end = [2, 7], 11
    got = tome.pose_loss(torch.from_numpy(maps), nouns, end)
    want = [numpy_pose(m, nouns, end) for m in maps]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert min(want) > 1.0  # far from the targets: the comparison is not vacuous


def test_pose_prior_pulls_centroids_to_the_reference_points(tome):
    maps = torch.zeros(1, 32, 32, 77)
    maps[..., 3] = 50.0  # another token takes the background, so each subject's map is one pixel
    maps[0, 16, 10, 2] = 50.0  # token 2 at (x=10, y=16): where the prior wants the first subject
    maps[0, 16, 25, 5] = 50.0
    maps[0, 16, [10, 25], 3] = 0.0
    at_target = tome.pose_loss(maps, [2, 5], 9)
    swapped = tome.pose_loss(maps, [5, 2], 9)
    assert float(at_target) < 0.5 < float(swapped)
    with pytest.raises(ValueError):
        tome.pose_loss(maps, [2], 9)


def test_gradients_through_inference_weights_without_copies(tome):
    with torch.inference_mode():
        layer = torch.nn.Linear(6, 4)
        norm = torch.nn.GroupNorm(2, 4)
        x0 = torch.randn(3, 6)
    reference = torch.nn.Linear(6, 4)
    reference.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})

    def loss(mod, x, norm_weight=norm.weight, norm_bias=norm.bias):
        return (torch.nn.functional.group_norm(mod(x), 2, norm_weight, norm_bias) ** 2).sum()

    x = x0.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
        loss(layer, x).backward()
    mode = tome.GradThroughInference()
    with mode:
        x = x0.clone().requires_grad_()
        grad, = torch.autograd.grad(loss(layer, x), [x])
    aliases = [alias for original, alias in mode._aliases.values() if original is layer.weight]
    assert aliases and aliases[0].data_ptr() == layer.weight.data_ptr()  # an alias, not a copy
    x = x0.clone().requires_grad_()
    want, = torch.autograd.grad(loss(reference, x, norm.weight.clone(), norm.bias.clone()), [x])
    assert torch.allclose(grad, want)


