"""The joint-attention adapters (nodes/joint_models.py) and the attention glue's view of a call: the registry agrees
with the text families, the text positions and the reference's windows, and DeLeaker through each token layout
(text first, image first, left padding, a padded caption with trailing tokens, an additive one-row mask, SD3's
[B, L, H, D] values) equals a dense reference written here on the call's own order."""

import math
from itertools import combinations

import pytest
import torch


@pytest.fixture(scope="module")
def mods(leakless):
    from leakless.nodes import attention_glue, deleaker, families, joint_models

    return joint_models, attention_glue, deleaker, families


def test_registry_covers_every_joint_family(mods):
    jm, _, _, families = mods
    assert len({m.id for m in jm.MODELS}) == len(jm.MODELS)
    read = {f for m in jm.MODELS for f in m.text_families}
    assert read == {f.id for f in families.FAMILIES if f.joint}
    assert jm.joint_model_of(["Flux2", "Flux", "BaseModel"]).id == "flux2"  # the most derived class first
    assert jm.joint_model_of(["Chroma", "Flux", "BaseModel"]).id == "chroma"
    assert jm.joint_model_of(["SDXL", "BaseModel"]) is None


def test_text_positions(mods):
    jm = mods[0]
    tp = jm.text_positions
    assert tp(((8, 8, 0),), {0: ((2, 3), 8)}) == (2, 3)
    assert tp(((16, 16, 0),), {0: ((2, 3), 8)}) == (2, 3, 10, 11)  # repeated to batch with a 16-row negative
    assert tp(((512, 512, 0),), {0: ((2, 3), 36)}, left_padded=True) == (478, 479)  # FLUX.2: padded to 512
    assert tp(((32, 11, 0),), {0: ((4,), 11)}) == (4,)  # Z-Image: the caption padded to 32 after the prompt
    hidream = ((128, 128, 0), (128, 128, 1), (128, 128, 1))
    assert tp(hidream, {0: ((3,), 128), 1: ((1, 2), 128)}) == (3, 129, 130, 257, 258)
    assert tp(((5, 5, 0),), {0: ((2,), 8)}) is None  # another prompt
    assert tp(((12, 12, 0),), {0: ((2,), 8)}) is None


def test_schedule_is_the_reference_on_flux_and_its_fractions_elsewhere(mods):
    jm = mods[0]
    flux = jm.Schedule.of(jm.BY_ID["flux"], 57, 19, 20, 0.6)
    assert (flux.history_start, flux.history_end, flux.intervene_start) == (12, 684, 18)  # the reference's
    assert flux.history_steps() == 12 and flux.in_history(12) and not flux.in_history(684)
    assert not flux.intervenes(17) and flux.intervenes(18)
    tiny_flux = jm.Schedule.of(jm.BY_ID["flux"], 2, 1, 4, 0.5)
    assert tiny_flux.intervene_start == 0  # FLUX: from the last double block
    qwen = jm.Schedule.of(jm.BY_ID["qwen_image"], 60, 60, 20, 0.6)
    assert (qwen.history_start, qwen.intervene_start) == (13, 19)  # 12/57 and 18/57 of 60 blocks
    assert jm.Schedule.of(jm.BY_ID["flux2"], 56, 8, 10, 0.6).intervene_start == 18


# ------------------------------------------------------------------- dense reference on the call's own order


def dense(q, k, v, img, entities, masks, st, bias=None):
    """The reference intervention on one sample ([H, L, D]) with the image rows at `img` (an index list) and each
    entity's text tokens at absolute positions; the model's mask added to the logits."""
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])

    def probs():
        return torch.softmax(s if bias is None else s + bias.double(), dim=-1)

    img = torch.tensor(img)
    done = set()
    for i, j in combinations(range(len(entities)), 2):
        p = probs()
        for src, dst in ((i, j), (j, i)):
            rows = img[masks[src]]
            if st.cross_text:
                s[:, rows[:, None], torch.tensor(entities[dst])[None]] = float("-inf")
            if st.self_text and src not in done:
                cols = torch.tensor(entities[src])[None]
                s[:, rows[:, None], cols] = s[:, rows[:, None], cols] * st.alpha
                done.add(src)
        if st.image_image:
            im_im = p[:, img[:, None], img[None]].mean(0)
            for src, dst in ((i, j), (j, i)):
                weighted = im_im * (masks[src][:, None] & masks[dst][None])
                nz = weighted[weighted != 0]
                thr = nz.mean() + st.beta_image * nz.std()
                cut = weighted > thr
                r, c = cut.nonzero(as_tuple=True)
                s[:, img[r], img[c]] = float("-inf")
    return probs() @ v.double()


def comfy_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                    **kwargs):
    """A stand-in with ComfyUI's attention signature: [B, L, H*D] (or [B, H, L, D] with skip_reshape) in,
    [B, L, H*D] out; a float mask added, a bool mask where True may attend."""
    if not skip_reshape:
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask[:, None]
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


LAYOUTS = {
    # name: (text rows T, image grid, image first, trailing tokens, kwargs of the call)
    "text first": (10, (4, 5), False, 0, {"skip_reshape": True}),
    "image first (HiDream)": (10, (4, 5), True, 0, {}),
    "caption padding and trailing tokens (Z-Image)": (16, (3, 5), False, 17, {"skip_reshape": True}),
    "one-row additive mask (Qwen-Image)": (10, (4, 5), False, 0, {"skip_reshape": True, "row_mask": True}),
    "values [B, L, H, D] (SD3)": (10, (4, 5), False, 0, {"v4d": True}),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_deleaker_through_each_layout_matches_dense(mods, name):
    _, glue, dl, _ = mods
    txt, grid, image_first, trailing, kw = LAYOUTS[name]
    kw = dict(kw)
    row_mask, v4d = kw.pop("row_mask", False), kw.pop("v4d", False)
    heads, d, n = 2, 8, grid[0] * grid[1]
    length = txt + n + trailing
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, heads, length, d, generator=g) for _ in range(3))
    entities_txt = ((1, 2), (5,))  # in the text part
    img = list(range(n)) if image_first else list(range(txt, txt + n))
    txt0 = n if image_first else 0
    entities = tuple(tuple(txt0 + p for p in e) for e in entities_txt)
    masks = torch.zeros(2, n, dtype=torch.bool)
    masks[0, :9], masks[1, 6:15] = True, True
    st = dl.Settings()
    bias = None
    if row_mask:
        bias = torch.zeros(1, 1, length)
        bias[0, 0, 3] = -1e4  # a padded text row nobody attends to
        bias[0, 0, txt + 2] = -0.7
    args = (q, k, v) if kw.get("skip_reshape") else tuple(t.transpose(1, 2).reshape(1, length, -1) for t in (q, k, v))
    if v4d:
        args = (args[0], args[1], v.transpose(1, 2))
    call = glue.AttentionCall(comfy_attention, None, (*args, heads, bias), kw)
    layout = glue.CallLayout(txt, grid, image_first)
    call.text_first(layout)
    plan = dl.MaskPlan(masks, st)
    ours = call.output(dl.deleaker_attention(call.q, call.k, call.v, call.attend, [plan],
                                             dl.Layout(txt, grid, entities_txt), st, [0], call.mask))
    ref_bias = None if bias is None else bias[0].expand(length, length)
    ref = dense(q[0], k[0], v[0], img, entities, masks, st, ref_bias).transpose(0, 1).reshape(length, -1)
    assert torch.allclose(ours[0].double(), ref, atol=2e-5)
    plain = call.plain()
    assert torch.equal(plain, comfy_attention(*args, heads, bias, **kw))  # the call unchanged
