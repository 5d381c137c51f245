"""nodes/heatmap.py against an independent dense reference: the full softmax of random q/k, for a cross-attention
call (queries: image rows; keys: text) and a joint one (text then image), maps of two grids averaged, the
normalisation, the colour ramp and the overlay."""

import math

import pytest
import torch
import torch.nn.functional as F


def text_then_image(*args):
    """A joint layout: text rows, then the image grid (nodes/registry/layout.py)."""
    from leakless.nodes.registry.layout import text_then_image as layout

    return layout(*args)


def cross_layout(*args):
    from leakless.nodes.registry.layout import cross_layout as layout

    return layout(*args)


@pytest.fixture
def mods(leakless):
    from leakless.nodes.methods import deleaker, heatmap

    return deleaker, heatmap


def dense_word_maps(q, k, queries, words):
    """[B, K, len(queries)]: mean over heads and each word's key positions of the full softmax."""
    probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    rows = probs[:, :, queries]
    return torch.stack([rows[..., list(w)].mean(dim=(-1, 1)) for w in words], dim=1)


def test_cross_and_joint_layouts_averaged_over_grids(mods):
    deleaker, heatmap = mods
    g = torch.Generator().manual_seed(0)
    words = ((1, 2), (5,))
    b, h, d, text = 2, 3, 8, 7
    q_cross, k_cross = torch.randn(b, h, 4 * 6, d, generator=g), torch.randn(b, h, text, d, generator=g)
    q_joint = torch.randn(b, h, text + 2 * 3, d, generator=g)
    k_joint = torch.randn(b, h, text + 2 * 3, d, generator=g)
    total = heatmap.HeatmapSum((4, 6))
    for fused in (False, True):  # the chunked path (the CPU's) and the fused one (other devices'), both here
        cross = deleaker.entity_scores(q_cross, k_cross, cross_layout((4, 6), words), fused=fused)
        assert torch.allclose(cross.double(), dense_word_maps(q_cross, k_cross, slice(0, 24), words), atol=1e-6)
        joint = deleaker.entity_scores(q_joint, k_joint, text_then_image(text, (2, 3), words), fused=fused)
        dense_joint = dense_word_maps(q_joint, k_joint, slice(text, None), words)
        assert torch.allclose(joint.double(), dense_joint, atol=1e-6)
    total.add(cross, (4, 6))
    total.add(joint, (2, 3))
    up = F.interpolate(dense_joint.reshape(b, 2, 2, 3), size=(4, 6), mode="bilinear", align_corners=False)
    reference = (dense_word_maps(q_cross, k_cross, slice(0, 24), words).reshape(b, 2, 4, 6) + up) / 2
    assert total.count == 2 and torch.allclose(total.mean.double(), reference, atol=1e-6)


def test_on_image_crops_the_padding_and_keeps_the_window(mods):
    """A grid of patches over a latent padded to whole patches: each cell covers cell x scale pixels, and what
    reaches past the image (the padding) is cut off, not squeezed in; a joined image's part of the grid is left
    out."""
    heatmap = mods[1]
    grid = torch.arange(5 * 9, dtype=torch.float32).reshape(1, 1, 5, 9)  # 72x136 px at /8, patch 2: 5x9 cells
    out = heatmap.on_image(grid, (0, 0, 5, 9), (2, 2), 8, (72, 136), mode="nearest")
    assert out.shape == (1, 1, 72, 136)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 15, 15] == 0 and out[0, 0, 16, 16] == 10  # 16 px per cell
    assert out[0, 0, 71, 135] == grid[0, 0, 4, 8]  # the last cells, cut at the image's edge
    wide = torch.cat([grid, -grid], dim=-1)  # HiDream-E1: the condition image joined on the right
    assert torch.equal(heatmap.on_image(wide, (0, 0, 5, 9), (2, 2), 8, (72, 136), mode="nearest"), out)
    square = torch.rand(1, 2, 4, 4)
    assert torch.allclose(heatmap.on_image(square, (0, 0, 4, 4), (1, 1), 8, (32, 32)),
                          torch.nn.functional.interpolate(square, size=(32, 32), mode="bilinear",
                                                          align_corners=False))


def test_block_range_and_mask(mods):
    heatmap = mods[1]
    assert list(heatmap.block_range(10, 0.0, 1.0)) == list(range(10))
    assert list(heatmap.block_range(10, 0.3, 0.7)) == [3, 4, 5, 6]
    assert list(heatmap.block_range(3, 1.0, 1.0)) == [2]  # at least one
    assert list(heatmap.block_range(4, 0.5, 0.5)) == [2]
    mask = torch.zeros(2, 7)
    assert heatmap.cross_attention_mask(mask, 5).shape == (2, 1, 5, 7)
    assert heatmap.cross_attention_mask(None, 5) is None


def test_normalised_colours_and_overlay(mods):
    heatmap = mods[1]
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    n = heatmap.normalised(maps)
    assert torch.equal(n[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]])) and torch.equal(n[0, 1], torch.zeros(2, 2))
    ramp = torch.tensor(heatmap.RAMP)
    assert torch.allclose(heatmap.heat_colours(torch.tensor([0.0, 1.0])), ramp[[0, -1]])
    mid = heatmap.heat_colours(torch.tensor([0.5 / (len(ramp) - 1)]))
    assert torch.allclose(mid[0], (ramp[0] + ramp[1]) / 2)
    images = torch.rand(1, 2, 2, 3)
    out = heatmap.overlay(images, n, 0.5)
    assert out.shape == (2, 2, 2, 3) and torch.equal(out[1], images[0])  # a zero map leaves the image
    a = 0.5 * n[0, 0, 1, 1]
    assert torch.allclose(out[0, 1, 1], images[0, 1, 1] * (1 - a) + ramp[-1] * a)
