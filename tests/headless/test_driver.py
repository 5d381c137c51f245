"""The driver's reading of what ComfyUI hands it (nodes/driver/calls.py), on ComfyUI's own attention functions:
the batch rows of each conditioning entry, and q/k/v of every layout ComfyUI's models pass ([B, H, L, D] with
skip_reshape, [B, L, H*D], SD3's [B, L, H, D] values) viewed as [B, H, L, D], the call run unchanged and on any
rows."""

import pytest
import torch


@pytest.fixture(scope="module")
def calls(comfy, leakless):
    from leakless.nodes.driver import calls

    return calls


def test_cond_rows_and_entries(calls):
    to = {"cond_or_uncond": [1, 0, 0], "uuids": ["neg", "a", "b"]}
    assert calls.cond_rows(to, 6) == [2, 3, 4, 5]  # every cond chunk (2 rows each)
    assert calls.cond_rows(to, 6, frozenset({"b"})) == [4, 5]  # the chunk of the tagged entry only
    assert calls.cond_rows(to, 6, frozenset()) == []
    assert calls.cond_rows({"cond_or_uncond": [0]}, 2, frozenset({"a"})) == []  # no uuids: no chunk is known
    assert calls.entries(to, 6, [2, 3, 4, 5]) == ("a", "b")


def test_step_from_the_sigma_schedule(calls):
    schedule = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert calls.sigma_step({"sample_sigmas": schedule, "sigmas": torch.tensor([7.0])}) == (1, 4)
    assert calls.sigma_step({"sample_sigmas": schedule, "sigmas": torch.tensor([5.0])}) == (1, 4)  # between
    assert calls.sigma_step({"sample_sigmas": schedule, "sigmas": torch.tensor([0.5])}) == (3, 4)
    assert "sigma schedule" in str(calls.sigma_step({}))


@pytest.mark.parametrize("layout", ["skip_reshape", "flat", "sd3 values"])
def test_attention_views_on_comfyui_attention(calls, layout):
    import comfy.ldm.modules.attention as attention

    func = attention.optimized_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g) for _ in range(3))
    if layout == "skip_reshape":
        args, kwargs = (q, k, v, 3), {"skip_reshape": True}
    else:
        args, kwargs = tuple(t.transpose(1, 2).reshape(2, 7, 12) for t in (q, k, v)) + (3,), {}
        if layout == "sd3 values":
            args = (args[0], args[1], v.transpose(1, 2), 3)
    a = calls.ComfyAttention(func, None, args, kwargs)
    assert all(torch.equal(x, y) for x, y in zip((a.q, a.k, a.v), (q, k, v), strict=True))
    expected = func(*args, **kwargs)
    assert torch.equal(a.plain(), expected)
    rows = a.attend(q[:, :, 2:5], k, v, None)
    assert torch.allclose(rows, expected[:, 2:5], atol=1e-6)
