"""DeLeaker's memory-bounded implementation against a dense reference written here from the reference code
(full logits, pair loop, re-softmax after each pair), on random FLUX-like q/k/v: after the mask-history window
(each row group's own bulk) and inside it (one pass over the image rows, cuts removed by signed weights, with and
without the guard's recomputation), with the model's own masks, in bf16 and fp16."""

import math
from itertools import combinations

import numpy as np
import pytest
import torch


def text_then_image(*args):
    """A joint layout: text rows, then the image grid (nodes/registry/layout.py)."""
    from leakless.nodes.registry.layout import text_then_image as layout

    return layout(*args)



@pytest.fixture(scope="module")
def dl(leakless):
    import leakless.nodes.methods.deleaker as dl

    return dl


# ---------------------------------------------------------------- the dense reference (one sample: [H, L, D])


def with_bias(s, bias):
    """The model's attention mask added to the logits (bool: False = may not attend)."""
    if bias is None:
        return s
    return s.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else s + bias.double()


def dense_scores(q, k, txt, n_img, entities, bias=None):
    s = with_bias((q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1]), bias)
    p = torch.softmax(s, dim=-1)
    return torch.stack([p[:, txt:txt + n_img][:, :, list(t)].mean(-1).mean(0) for t in entities])  # [K, N]


def np_morph(mask, h, w):
    """OpenCV-style 3x3 opening then closing x2, borders neutral."""
    g = mask.reshape(h, w).astype(bool)

    def shift_all(x, fill):
        p = np.pad(x, 1, constant_values=fill)
        return [p[i:i + h, j:j + w] for i in range(3) for j in range(3)]

    def erode(x):
        return np.logical_and.reduce(shift_all(x, True))

    def dilate(x):
        return np.logical_or.reduce(shift_all(x, False))

    g = dilate(erode(g))
    g = erode(erode(dilate(dilate(g))))
    return g.reshape(-1)


def dense_masks(scores, grid, beta, smoothing=True):
    out = []
    for s in scores:
        m = (s > s.mean() + beta * s.std()).numpy()
        out.append(np_morph(m, *grid) if smoothing else m)
    return torch.tensor(np.stack(out))


def dense_attention(q, k, v, txt, n_img, entities, masks, st, bias=None):
    """The reference processor's intervention on one sample, written out in full. The edits act on q.k logits; a
    model's attention mask is added after them."""
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    p = torch.softmax(with_bias(s, bias), dim=-1)
    img = slice(txt, txt + n_img)
    strengthened = set()
    for i, j in combinations(range(len(entities)), 2):
        mi, mj = masks[i], masks[j]
        ti, tj = list(entities[i]), list(entities[j])
        if st.cross_text:
            for rows, cols in ((mi, tj), (mj, ti)):
                sub = s[:, img][:, :, cols]
                sub[:, rows] = float("-inf")
                block = s[:, img]
                block[:, :, cols] = sub
                s[:, img] = block
        if st.self_text:
            for e, rows, cols in ((i, mi, ti), (j, mj, tj)):
                if not st.alpha_per_pair and e in strengthened:
                    continue
                strengthened.add(e)
                block = s[:, img]
                sub = block[:, :, cols]
                sub[:, rows] = sub[:, rows] * st.alpha
                block[:, :, cols] = sub
                s[:, img] = block
        if st.image_image:
            im_im = p[:, img, img].mean(0)
            for rows, cols in ((mi, mj), (mj, mi)):
                cross = rows[:, None] & cols[None, :]
                weighted = im_im * cross
                nz = weighted[weighted != 0]
                if nz.numel() == 0:
                    continue
                thr = nz.mean() + st.beta_image * nz.std()
                block = s[:, img, img]
                block[:, weighted > thr] = float("-inf")
                s[:, img, img] = block
        p = torch.softmax(with_bias(s, bias), dim=-1)
    return p @ v.double()  # [H, L, D]


# ---------------------------------------------------------------------------------------------- fixtures


def make(seed, heads=4, d=16, txt=12, grid=(6, 5), batch=2, blobs=True):
    g = torch.Generator().manual_seed(seed)
    length = txt + grid[0] * grid[1] + 3  # 3 trailing tokens stand for Kontext reference-image tokens
    q = torch.randn(batch, heads, length, d, generator=g)
    k = torch.randn(batch, heads, length, d, generator=g)
    v = torch.randn(batch, heads, length, d, generator=g)
    if blobs:  # 3x3 image regions that attend to "their" entity token, so masks are blobs (two overlap)
        n, (h, w) = grid[0] * grid[1], grid
        for tok, (r, c) in zip((2, 5, 8), ((0, 0), (h - 3, w - 3), (0, w - 3)), strict=True):
            region = torch.zeros(n, dtype=torch.bool)
            region.view(h, w)[r:r + 3, c:c + 3] = True
            img_q = q[:, :, txt:txt + n]
            img_q[:, :, region] += 3.0 * k[:, :, tok:tok + 1]
            q[:, :, txt:txt + n] = img_q
    return q, k, v


def sdpa(q, k, v, mask=None):
    """The model's own attention in these tests: [b, H, Lq, D] -> [b, Lq, H*D]."""
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def run_ours(dl, q, k, v, layout, masks, st, batch_rows, mask=None, whole=False):
    """deleaker_attention; whole: where the fused kernel is the model's attention (the driver's verdict), from its
    output and lse on the whole call, as the patch does then."""
    from leakless.nodes.methods import kernels

    asked = []

    def attend(qx, kx, vx, m):  # records how many query rows each call to the model's attention gets
        asked.append(qx.shape[2])
        return sdpa(qx, kx, vx, m)

    plans = [dl.MaskPlan(m, st) for m in masks]
    call = kernels.fused_attention(q, k, v, kernels.comfy_mask(mask)) if whole else None
    out = dl.deleaker_attention(q, k, v, attend, plans, layout, st, batch_rows, mask, call)
    run_ours.asked = asked
    return out


SWITCHES = {
    "all": {},
    "no-image-image": {"image_image": False},
    "no-cross-text": {"cross_text": False},
    "no-self-text": {"self_text": False},
    "only-image-image": {"cross_text": False, "self_text": False},
    "alpha-per-pair": {"alpha_per_pair": True},
    "no-smoothing": {"smoothing": False},
}


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("way", ["chunked", "fused", "lse", "own-pass"])
@pytest.mark.parametrize("grid", [(6, 5), (4, 9), (7, 7)])
def test_entity_scores_and_masks_match_dense(dl, grid, way, monkeypatch):
    from leakless.nodes.methods import kernels

    q, k, v = make(0, grid=grid)
    layout = text_then_image(12, grid, ((2, 3), (5,), (8, 9, 10)))
    monkeypatch.setattr(dl, "CHUNK_ELEMENTS", 4 * 50 * 7)  # force several query chunks
    if way == "lse":  # off the row log-sum-exp of the call's own fused attention
        ours = dl.scores_from_lse(q, k, kernels.attention(q, k, v)[1], layout)
    elif way == "own-pass":  # a pass of their own: one fused call over the image rows
        ours = dl.entity_scores(q, k, layout, v=v)
    else:
        ours = dl.entity_scores(q, k, layout, fused=way == "fused")
    for b in range(q.shape[0]):
        ref = dense_scores(q[b], k[b], 12, layout.n_img, layout.entities)
        assert torch.allclose(ours[b].double(), ref, atol=1e-6)
    for smoothing in (True, False):
        st = dl.Settings(smoothing=smoothing)
        masks = dl.entity_masks(ours, layout, st)
        for b in range(q.shape[0]):
            assert torch.equal(masks[b], dense_masks(ours[b].double(), grid, 1.0, smoothing))


@pytest.mark.parametrize("whole", [False, True], ids=["another-backend", "fused-is-model"])
@pytest.mark.parametrize("n_entities", [2, 3])
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_edited_attention_matches_dense(dl, n_entities, switch, whole, monkeypatch):
    grid = (6, 5)
    q, k, v = make(1 + n_entities, grid=grid)
    ents = ((2, 3), (5,), (8, 9, 10))[:n_entities]
    layout = text_then_image(12, grid, ents)
    st = dl.Settings(**SWITCHES[switch])
    masks = dl.entity_masks(dl.entity_scores(q, k, layout), layout, st)[1:]  # row 1 is "cond"
    assert bool(masks.any(dim=-1).all()), "every entity needs a mask for the test to mean something"
    if st.image_image:
        cut = dl.image_image_cuts(q[1], k[1], v[1], dl.MaskPlan(masks[0], st), layout, st)
        assert bool(cut.any()), "image-image must block something"
    monkeypatch.setattr(dl, "CHUNK_ELEMENTS", 4 * 45 * 5)  # several row chunks per group
    out = run_ours(dl, q, k, v, layout, masks, st, batch_rows=[1], whole=whole)
    ref = dense_attention(q[1], k[1], v[1], 12, layout.n_img, ents, masks[0], st)
    ref = ref.transpose(0, 1).reshape(q.shape[2], -1)
    assert torch.allclose(out[1].double(), ref, atol=1e-5), (out[1].double() - ref).abs().max()
    base = sdpa(q, k, v)
    assert torch.allclose(out[0], base[0], atol=1e-6)  # the uncond row is untouched
    assert torch.equal(out[0], base[0])  # ... and is the model's own attention
    assert sum(run_ours.asked) <= 2 * q.shape[2]  # no row is computed twice by the model's attention
    assert torch.equal(out[1, :12], base[1, :12])  # text queries are the model's own
    assert torch.equal(out[1, 12 + layout.n_img:], base[1, 12 + layout.n_img:])  # reference tokens too
    assert torch.isfinite(out).all()
    alone = 12 + (~masks[0].any(0)).nonzero().flatten()
    assert torch.equal(out[1, alone], base[1, alone])  # image rows in no mask are the model's own too
    if whole:
        assert run_ours.asked == []  # every row left alone is the whole call's fused output, the model's


@pytest.mark.parametrize("guard", [None, 2.0], ids=["default", "recompute-every-edited-row"])
def test_whole_call_edit_guard(dl, guard, monkeypatch):
    """From the whole call's fused output, the edited rows take their explicit columns' original weights out and
    put the edited ones in (signed weights); rows whose normaliser would keep less than GUARD of their bulk are
    recomputed without those columns (without the guard this planted case, a low image threshold cutting most of
    some rows' mass, loses precision). The default guard and one that recomputes every edited row both match the
    dense reference."""
    grid = (6, 5)
    q, k, v = make(6, grid=grid)
    ents = ((2, 3), (5,), (8, 9, 10))
    layout = text_then_image(12, grid, ents)
    st = dl.Settings(beta_image=-0.3)  # a low threshold: many cuts
    masks = dl.entity_masks(dl.entity_scores(q, k, layout), layout, dl.Settings(beta_text=0.0))[1:]
    if guard is not None:
        monkeypatch.setattr(dl, "GUARD", {torch.float32: guard})
    recomputed = []
    original = dl._bulk
    monkeypatch.setattr(dl, "_bulk", lambda *a: recomputed.append(a[0].shape[-2]) or original(*a))
    out = run_ours(dl, q, k, v, layout, masks, st, batch_rows=[1], whole=True)
    ref = dense_attention(q[1], k[1], v[1], 12, layout.n_img, ents, masks[0], st).transpose(0, 1).reshape(45, -1)
    assert torch.allclose(out[1].double(), ref, atol=1e-5), (out[1].double() - ref).abs().max()
    assert recomputed  # some rows were


def test_overlapping_masks_reference_and_exclusive(dl):
    grid = (5, 6)
    q, k, v = make(7, grid=grid)
    ents = ((2, 3), (5,), (8, 9))
    layout = text_then_image(12, grid, ents)
    masks = torch.zeros(1, 3, 30, dtype=torch.bool)
    masks[0, 0, :14] = True
    masks[0, 1, 8:22] = True  # overlaps entity 0 on rows 8..13
    masks[0, 2, 12:30] = True  # overlaps both
    for st in (dl.Settings(), dl.Settings(alpha_per_pair=True), dl.Settings(image_image=False)):
        out = run_ours(dl, q, k, v, layout, masks, st, batch_rows=[0])
        ref = dense_attention(q[0], k[0], v[0], 12, 30, ents, masks[0], st).transpose(0, 1).reshape(45, -1)
        assert torch.allclose(out[0].double(), ref, atol=2e-5)
        assert torch.isfinite(out).all()  # contested rows lose entity tokens but keep the others
    scores = torch.rand(1, 3, 30)
    exclusive = dl.entity_masks(scores, layout, dl.Settings(overlap="exclusive", smoothing=False, beta_text=-5))
    assert int(exclusive.sum(dim=1).max()) == 1
    assert torch.equal(exclusive[0].float().argmax(0), scores[0].argmax(0))


def test_exclusive_overlap_keeps_every_contested_token_with_three_entities(dl):
    """A token held by the masks of entities 1 and 2 whose highest score is entity 0's (not holding it) goes to the
    better of 1 and 2, never to nobody (the independent check found 6 such tokens dropped in a planted case)."""
    grid = (4, 6)
    layout = text_then_image(3, grid, ((0,), (1,), (2,)))
    gen = torch.Generator().manual_seed(4)
    scores = torch.rand(2, 3, 24, generator=gen) * 0.2
    scores[:, 0] += 0.8
    scores[:, 0, 20:] = 5.0  # entity 0's mask: its few strongest tokens only
    scores[:, 1:, :4] += 0.6  # tokens 0..3: in the masks of 1 and 2, and entity 0 scores highest there
    st = dl.Settings(overlap="exclusive", smoothing=False, beta_text=-0.3)
    plain = dl.entity_masks(scores, layout, dl.Settings(smoothing=False, beta_text=-0.3))
    ours = dl.entity_masks(scores, layout, st)
    # dense reference: each token in at least one mask goes to the holder with the highest score
    ref = torch.zeros_like(plain)
    for b in range(2):
        for n in range(24):
            holders = [e for e in range(3) if plain[b, e, n]]
            if holders:
                ref[b, max(holders, key=lambda e: float(scores[b, e, n])), n] = True
    assert torch.equal(ours, ref)
    assert torch.equal(ours.any(dim=1), plain.any(dim=1))  # no contested token is dropped
    contested_elsewhere = (plain.sum(1) > 1) & ~plain.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
    assert bool(contested_elsewhere.any())  # the case that used to drop tokens is in the sample


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_model_attention_mask_is_kept(dl, kind, monkeypatch):
    """A mask the model passes to its attention (ComfyUI's [L, L], [B, L, L] or [B, H, L, L]) holds in the entity
    scores, the image-image statistics and every edited row."""
    q, k, v = make(5)
    length, layout = q.shape[2], text_then_image(12, (6, 5), ((2, 3), (5,), (8, 9, 10)))
    g = torch.Generator().manual_seed(9)
    if kind == "bool":  # per batch row; no row fully masked
        mask = torch.rand(2, length, length, generator=g) > 0.2
        mask[..., 0] = True
    else:  # shared by the batch, per head
        mask = torch.randn(1, 4, length, length, generator=g)
    st = dl.Settings()
    full = dl.attention_mask_4d(mask)
    scores = dl.entity_scores(q[1:], k[1:], layout, dl.attention_mask_4d(mask, [1]))
    bias = full[1 if full.shape[0] > 1 else 0]
    assert torch.allclose(scores[0].double(), dense_scores(q[1], k[1], 12, 30, layout.entities, bias), atol=1e-6)
    from leakless.nodes.methods import kernels

    def every_way(m):
        sub = dl.attention_mask_4d(m, [1])
        return {"chunked": dl.entity_scores(q[1:], k[1:], layout, sub, fused=False),
                "fused": dl.entity_scores(q[1:], k[1:], layout, sub, fused=True),
                "lse": dl.scores_from_lse(q[1:], k[1:], kernels.attention(q[1:], k[1:], v[1:], sub)[1], layout, sub),
                "own-pass": dl.entity_scores(q[1:], k[1:], layout, sub, v=v[1:])}

    for way, other in every_way(mask).items():
        assert torch.allclose(other, scores, atol=1e-6), way
    dead = mask.clone()  # an image row that may attend to nothing: NaN on every path, as the softmax gives
    if kind == "bool":
        dead[..., 12 + 4, :] = False
    else:
        dead[..., 12 + 4, :] = float("-inf")
    for way, out in every_way(dead).items():
        assert torch.isnan(out[..., 4]).all() and not torch.isnan(out[..., 5]).any(), way
    masks = dl.entity_masks(scores, layout, st)
    monkeypatch.setattr(dl, "CHUNK_ELEMENTS", 4 * 45 * 5)
    ref = dense_attention(q[1], k[1], v[1], 12, 30, layout.entities, masks[0], st, bias)
    for whole in (False, True):
        out = run_ours(dl, q, k, v, layout, masks, st, batch_rows=[1], mask=mask, whole=whole)
        assert torch.allclose(out[1].double(), ref.transpose(0, 1).reshape(length, -1), atol=1e-5)
        assert torch.equal(out[0], sdpa(q, k, v, full)[0])


def test_no_edits_or_one_entity_is_identity(dl):
    q, k, v = make(3)
    layout = text_then_image(12, (6, 5), ((2,), (5,)))
    masks = torch.ones(2, 2, 30, dtype=torch.bool)
    off = dl.Settings(cross_text=False, self_text=False, image_image=False)
    base = sdpa(q, k, v)
    assert torch.equal(run_ours(dl, q, k, v, layout, masks, off, [0, 1]), base)
    one = text_then_image(12, (6, 5), ((2,),))
    assert torch.equal(run_ours(dl, q, k, v, one, masks[:, :1], dl.Settings(), [0, 1]), base)


def test_history_is_the_running_mean(dl):
    h = dl.MaskHistory()
    xs = [torch.rand(1, 2, 30) for _ in range(5)]
    for x in xs:
        h.update(x)
    assert torch.allclose(h.mean, torch.stack(xs).mean(0), atol=1e-6) and h.count == 5
    h.update(torch.full((1, 2, 30), float("nan")))  # all-NaN scores fall back to a finite fill
    assert torch.isfinite(h.mean).all()
    h.reset()
    assert h.mean is None and h.count == 0


def dense_in(dtype, q, k, v, txt, n_img, entities, masks, st):
    """The dense reference computed in `dtype` itself (logits, softmax, values), as a plain implementation in that
    dtype would: its distance from the fp64 reference on the fp32 inputs is the spread the dtype itself costs."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    p = torch.softmax(s, dim=-1)
    img = slice(txt, txt + n_img)
    strengthened = set()
    for i, j in combinations(range(len(entities)), 2):
        mi, mj = masks[i], masks[j]
        for rows, cols in ((mi, list(entities[j])), (mj, list(entities[i]))):
            block = s[:, img]
            sub = block[:, :, cols]
            sub[:, rows] = float("-inf")
            block[:, :, cols] = sub
            s[:, img] = block
        for e, rows in ((i, mi), (j, mj)):
            if e in strengthened:
                continue
            strengthened.add(e)
            block = s[:, img]
            sub = block[:, :, list(entities[e])]
            sub[:, rows] = sub[:, rows] * st.alpha
            block[:, :, list(entities[e])] = sub
            s[:, img] = block
        im_im = p[:, img, img].float().mean(0)
        for rows, cols in ((mi, mj), (mj, mi)):
            weighted = im_im * (rows[:, None] & cols[None, :])
            nz = weighted[weighted != 0]
            block = s[:, img, img]
            block[:, weighted > nz.mean() + st.beta_image * nz.std()] = float("-inf")
            s[:, img, img] = block
        p = torch.softmax(s, dim=-1)
    return (p @ v).transpose(0, 1).reshape(s.shape[1], -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_model_dtype(dl, dtype):
    """FLUX usually runs in bf16: statistics, merges and softmax run in fp32, the output keeps the model's dtype and
    stays within the spread the dense reference itself shows between fp64 on the fp32 inputs and that dtype; the
    scores are the fp32 scores of the rounded values."""
    q, k, v = make(4)
    layout = text_then_image(12, (6, 5), ((2, 3), (5,), (8, 9, 10)))
    st = dl.Settings()
    masks = dl.entity_masks(dl.entity_scores(q, k, layout), layout, st)[1:]
    exact = dense_attention(q[1], k[1], v[1], 12, 30, layout.entities, masks[0], st).transpose(0, 1).reshape(45, -1)
    spread = float((dense_in(dtype, q[1], k[1], v[1], 12, 30, layout.entities, masks[0], st).double() - exact)
                   .abs().max())
    ql, kl, vl = q.to(dtype), k.to(dtype), v.to(dtype)
    for whole in (False, True):
        out = run_ours(dl, ql, kl, vl, layout, masks, st, batch_rows=[1], whole=whole)
        assert out.dtype == dtype and torch.isfinite(out).all()
        err = float((out[1].double() - exact).abs().max())
        assert err <= spread, (whole, err, spread)
    for fused in (False, True):  # low-precision q, k: the scores are the fp32 scores of the rounded values
        scores = dl.entity_scores(ql, kl, layout, fused=fused)
        assert scores.dtype == torch.float32
        ref = torch.stack([dense_scores(ql[b].float(), kl[b].float(), 12, 30, layout.entities) for b in range(2)])
        assert torch.allclose(scores.double(), ref, atol=1e-6)
    from leakless.nodes.methods import kernels

    lse = kernels.attention(ql, kl, vl)[1]  # the kernel's own normaliser of the rounded values
    assert lse.dtype == torch.float32
    exact = torch.stack([dense_scores(q[b], k[b], 12, 30, layout.entities) for b in range(2)])
    probs = torch.softmax((ql @ kl.transpose(-1, -2)) / math.sqrt(16), dim=-1)  # the dense scores in the dtype
    spread = torch.stack([probs[:, :, 12:42][..., list(t)].float().mean(-1).mean(1) for t in layout.entities], 1)
    bound = float((spread.double() - exact).abs().max())
    assert float((dl.scores_from_lse(ql, kl, lse, layout).double() - exact).abs().max()) <= bound
