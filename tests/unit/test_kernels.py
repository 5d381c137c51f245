"""nodes/methods/kernels.py against a dense fp64 reference: the fused kernel's row log-sum-exp is the logsumexp of
the logits, its output is SDPA's bit for bit on the CPU, the exact chunked fallback (math backend, refused inputs,
masks of every kind, rows with no key), merges over disjoint key sets, and 16-bit inputs within the spread the dense
reference itself shows in that dtype. The CUDA branches cannot run here (no GPU); the pure part of them is checked."""

import math

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def kn(leakless):
    from leakless.nodes.methods import kernels

    return kernels


def qkv(seed, b=2, h=3, lq=37, lk=41, d=16, dv=None):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, dv or d, generator=g))


def dense(q, k, v, mask=None):
    """(out, lse) in fp64, the mask added (bool: False = may not attend); a row with no key: out 0, lse -inf."""
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v.double(), lse


def masks(lq, lk, seed=3):
    g = torch.Generator().manual_seed(seed)
    bool_mask = torch.rand(2, 1, lq, lk, generator=g) > 0.3
    bool_mask[..., 0] = True
    return {
        "none": None,
        "bool [B, 1, Lq, Lk]": bool_mask,
        "float [1, H, Lq, Lk]": torch.randn(1, 3, lq, lk, generator=g),
        "bool one row [B, 1, 1, Lk]": torch.rand(2, 1, 1, lk, generator=g) > 0.5,
        "float [Lq, Lk]": torch.randn(lq, lk, generator=g),
    }


@pytest.mark.parametrize("name", list(masks(2, 2)))
@pytest.mark.parametrize("way", ["fused", "chunked"])
def test_lse_is_logsumexp_and_out_is_attention(kn, name, way, monkeypatch):
    q, k, v = qkv(0)
    mask = masks(37, 41)[name]
    if way == "chunked":
        monkeypatch.setattr(kn, "backend", lambda *a: kn.MATH)  # SDPA's math path: the exact fallback
        monkeypatch.setattr(kn, "CHUNK_ELEMENTS", 2 * 3 * 41 * 5)  # several query chunks
    out, lse = kn.attention(q, k, v, mask)
    ref_out, ref_lse = dense(q, k, v, mask)
    assert out.dtype == q.dtype and lse.dtype == torch.float32 and lse.shape == q.shape[:-1]
    assert torch.allclose(lse.double(), ref_lse, atol=2e-6), (lse.double() - ref_lse).abs().max()
    assert torch.allclose(out.double(), ref_out, atol=1e-6)
    if way == "fused":  # on the CPU the kernel is SDPA's own: the same bits
        assert kn.kernel_name(q, k, v, mask) == "flash (CPU)"
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=kn.comfy_mask(mask)))


@pytest.mark.parametrize("way", ["fused", "chunked"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_row_with_no_key_left(kn, way, kind, monkeypatch):
    """out 0 (as SDPA gives) and lse -inf, fused (whose CPU kernel returns lse 0 there) and exact."""
    q, k, v = qkv(1)
    mask = torch.ones(1, 1, 37, 41, dtype=torch.bool)
    mask[..., 5, :] = False
    if kind == "float":
        mask = torch.zeros(1, 1, 37, 41).masked_fill(~mask, float("-inf"))
    if way == "chunked":
        monkeypatch.setattr(kn, "backend", lambda *a: kn.MATH)
    out, lse = kn.attention(q, k, v, mask)
    assert torch.isneginf(lse[..., 5]).all() and torch.isfinite(lse[..., 4]).all()
    assert torch.equal(out[..., 5, :], torch.zeros_like(out[..., 5, :])) and torch.isfinite(out).all()


def test_refused_inputs_fall_back_to_the_exact_computation(kn, monkeypatch):
    """Values of another head size than the keys': SDPA's fused CPU kernel refuses them; `attention` computes them
    exactly instead (here even when told the kernel would take them)."""
    q, k, v = qkv(2, dv=8)
    ref_out, ref_lse = dense(q, k, v)
    for pretend in (False, True):
        if pretend:
            monkeypatch.setattr(kn, "backend", lambda *a: kn.FLASH)
        out, lse = kn.attention(q, k, v)
        assert out.shape == (2, 3, 37, 8)
        assert torch.allclose(out.double(), ref_out, atol=1e-6) and torch.allclose(lse.double(), ref_lse, atol=2e-6)


def test_three_dimensional_inputs_are_one_batch_row(kn):
    q, k, v = qkv(3, b=1)
    mask = torch.rand(1, 37, 41) > 0.2
    mask[..., 0] = True
    out, lse = kn.attention(q[0], k[0], v[0], mask)
    full_out, full_lse = kn.attention(q, k, v, mask[None])
    assert torch.equal(out, full_out[0]) and torch.equal(lse, full_lse[0])


def test_merge_over_disjoint_key_sets_is_exact(kn):
    q, k, v = qkv(4)
    whole_out, whole_lse = dense(q, k, v)
    first = torch.arange(41) % 3 == 0  # any split of the keys
    parts = [kn.attention(q, k[:, :, keys], v[:, :, keys]) for keys in (first, ~first)]
    out, lse = kn.merge(*parts[0], *parts[1])
    assert torch.allclose(out.double(), whole_out, atol=1e-6) and torch.allclose(lse.double(), whole_lse, atol=2e-6)
    nothing = (torch.zeros_like(parts[0][0]), torch.full_like(parts[0][1], float("-inf")))  # a side with no key
    out, lse = kn.merge(*parts[0], *nothing)
    assert torch.equal(out, parts[0][0]) and torch.equal(lse, parts[0][1])
    out, lse = kn.merge(*nothing, *nothing)
    assert torch.equal(out, nothing[0]) and torch.isneginf(lse).all()
    far = (parts[1][0], parts[1][1] + 200.0)  # one side e^200 heavier: no overflow, that side's output
    out, _ = kn.merge(*parts[0], *far)
    assert torch.allclose(out, parts[1][0], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_within_the_dtypes_own_spread(kn, dtype):
    """16-bit inputs: out as close to the fp64 result on the fp32 inputs as attention computed in that dtype itself
    is; lse in fp32, within the dtype's own rounding of the exact lse of the rounded inputs."""
    q, k, v = qkv(5)
    ref_out, _ = dense(q, k, v)
    ql, kl, vl = q.to(dtype), k.to(dtype), v.to(dtype)
    own_out = torch.softmax((ql @ kl.transpose(-1, -2)) / math.sqrt(16), dim=-1) @ vl
    out, lse = kn.attention(ql, kl, vl)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert (out.double() - ref_out).abs().max() <= (own_out.double() - ref_out).abs().max()
    _, rounded_lse = dense(ql, kl, vl)
    assert ((lse.double() - rounded_lse).abs() <= torch.finfo(dtype).eps * rounded_lse.abs()).all()


def test_layouts_and_masks_as_comfyui_passes_them(kn):
    q, k, v = qkv(6)
    out, lse = kn.fused_attention(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 37, 48))
    assert kn.comfy_mask(torch.ones(37, 41)).shape == (1, 1, 37, 41)
    assert kn.comfy_mask(torch.ones(2, 37, 41)).shape == (2, 1, 37, 41)
    assert kn.comfy_mask(None) is None
    bool_mask = torch.rand(2, 1, 37, 41) > 0.5
    additive = kn.sdpa_mask(bool_mask, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and torch.equal(torch.isneginf(additive), ~bool_mask)


def test_cuda_mask_padding_is_sdpas(kn):
    """The memory-efficient and cuDNN kernels take the mask as SDPA pads it (last dim to a multiple of 16, then
    sliced back, expanded): the same values (the kernels themselves need a GPU)."""
    q, k, _ = qkv(7)
    mask = torch.randn(2, 1, 37, 41)
    bias = kn._sdpa_bias(mask, q, k)
    assert bias.shape == (2, 3, 37, 41) and torch.equal(bias[:, 1], mask[:, 0])
    assert bias.storage_offset() == 0 and bias.stride(-2) == 48  # the padded row pitch
