"""The model registry (nodes/registry/models.py, layout.py): every joint text family has a model; a ComfyUI model
is recognised by its config classes, the most derived first; each entry's layout of a main attention call, from what
a model call holds (caption padding, image padding, left padding, image first, joined images, reference tokens);
phrases placed in every copy of the prompt's rows; the text-first order; and DeLeaker through each layout equals a
dense reference written here on the call's own order."""

import math
from itertools import combinations
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def reg(leakless):
    from leakless.nodes.registry import families, layout, models

    return SimpleNamespace(models=models, layout=layout, families=families)


@pytest.fixture(scope="module")
def dl(leakless):
    import leakless.nodes.methods.deleaker as dl

    return dl


def test_registry_covers_every_joint_family(reg):
    models = reg.models.MODELS
    assert len({m.id for m in models}) == len(models)
    read = {f for m in models if m.joint for f in m.text_families}
    assert read == {f.id for f in reg.families.FAMILIES if f.joint}
    assert {f for m in models if not m.joint for f in m.text_families} == {"sdxl", "sd15"}
    of = reg.models.model_of
    assert of(["Flux2", "Flux", "BASE"]).id == "flux2"  # the most derived config first
    assert of(["FluxSchnell", "Flux", "BASE"]).id == "flux"
    assert of(["ZImage", "Lumina2", "BASE"]).id == "z_image"
    assert of(["SSD1B", "SDXL", "BASE"]).id == "sdxl" and not of(["SDXL", "BASE"]).joint
    assert of(["WAN21_T2V", "BASE"]) is None


def blocks(*counts):
    return [list(range(c)) for c in counts]


def dit(**attributes):
    """A diffusion model's attributes as the registry reads them (test data: patch size, padding, block lists)."""
    return SimpleNamespace(**attributes)


def test_layouts_of_every_kind_of_model_call(reg):
    by, call_layout = reg.models.BY_ID, reg.models.call_layout
    x = (1, 16, 8, 12)  # a latent of 64x96 px: 4x6 tokens at patch 2
    flux = call_layout(by["flux"], dit(patch_size=2), x, 256, {})
    assert [(s.kind, s.start, s.length) for s in flux.segments] == [("text", 0, 256), ("image", 256, 24)]
    assert flux.fits(280) == "main" and flux.fits(100) == "other" and flux.fits(300) == "unknown"
    kontext = call_layout(by["flux"], dit(patch_size=2), x, 256, {"ref_latents": [torch.zeros(1, 16, 8, 8)]})
    assert kontext.fits(280 + 16) == "main"  # reference tokens after the image
    zimage = call_layout(by["z_image"], dit(patch_size=2, pad_tokens_multiple=32), (1, 16, 10, 10), 11, {})
    assert [(s.kind, s.start, s.length, s.rows) for s in zimage.segments] == [
        ("text", 0, 32, 11), ("image", 32, 25, 0), ("pad", 57, 7, 0)]
    with pytest.raises(StopIteration):
        next(s for s in zimage.segments if s.kind == "references")
    assert by["z_image"].refused({"ref_latents": [torch.zeros(1)]}) and not by["z_image"].refused({"ref_latents": []})
    hidream = call_layout(by["hidream"], dit(patch_size=2), x, 128, {"encoder_hidden_states_llama3": torch.zeros(
        1, 32, 128, 8)})
    assert [(s.kind, s.start, s.stream) for s in hidream.segments] == [
        ("image", 0, ""), ("text", 24, "prompt"), ("text", 152, "llama"), ("text", 280, "llama")]
    e1 = call_layout(by["hidream"], dit(patch_size=2), x, 128, {"image_cond": torch.zeros(1, 16, 8, 12)})
    assert e1.grid == (4, 12) and e1.target == (0, 0, 4, 6) and e1.image_segment.length == 48  # read from the call
    old_hunyuan = dit(patch_size=[1, 1], double_blocks=[SimpleNamespace(flipped_img_txt=True)])
    entry = reg.models.DiffusionModel("t", "T", ("T",), ("flux",), image_first_when="double_blocks.0.flipped_img_txt")
    assert call_layout(entry, old_hunyuan, x, 10, {}).image_first and call_layout(entry, dit(patch_size=[1, 1],
                       double_blocks=[SimpleNamespace()]), x, 10, {}).segments[0].kind == "text"
    assert call_layout(entry, old_hunyuan, x, 10, {}).grid == (8, 12)  # a patch size per axis


def test_text_first_order(reg):
    hidream = reg.models.call_layout(reg.models.BY_ID["hidream"], dit(patch_size=2), (1, 16, 4, 4), 3,
                                     {"encoder_hidden_states_llama3": torch.zeros(1, 4, 2, 8)})
    canonical, order = hidream.text_first()
    assert [(s.kind, s.start, s.length) for s in canonical.segments] == [
        ("text", 0, 3), ("text", 3, 2), ("text", 5, 2), ("image", 7, 4)]
    assert order == [4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3]
    flux = reg.layout.text_then_image(3, (2, 2))
    assert flux.text_first() == (flux, None)


def test_phrases_in_every_copy_of_the_prompt(reg):
    by, call_layout = reg.models.BY_ID, reg.models.call_layout
    flux = reg.layout.text_then_image(8, (2, 2))
    assert flux.with_phrases({"prompt": (((2, 3),), 8)}).entities == ((2, 3),)
    sixteen = reg.layout.text_then_image(16, (2, 2))
    assert sixteen.with_phrases({"prompt": (((2, 3),), 8)}).entities == ((2, 3, 10, 11),)  # tiled to batch
    flux2 = call_layout(by["flux2"], dit(patch_size=1), (1, 128, 2, 2), 512, {})
    assert flux2.with_phrases({"prompt": (((2, 3),), 36)}, left_padded=True).entities == ((478, 479),)
    zimage = call_layout(by["z_image"], dit(patch_size=2, pad_tokens_multiple=32), (1, 16, 4, 4), 11, {})
    assert zimage.with_phrases({"prompt": (((4,),), 11)}).entities == ((4,),)  # the caption's padding after it
    hidream = call_layout(by["hidream"], dit(patch_size=2), (1, 16, 4, 4), 128,
                          {"encoder_hidden_states_llama3": torch.zeros(1, 32, 128, 8)})
    canonical, _ = hidream.text_first()
    assert canonical.with_phrases({"prompt": (((3,),), 128), "llama": (((1, 2),), 128)}).entities == (
        (3, 129, 130, 257, 258),)
    assert reg.layout.text_then_image(5, (2, 2)).with_phrases({"prompt": (((2,),), 8)}) is None  # another prompt
    assert reg.layout.text_then_image(12, (2, 2)).with_phrases({"prompt": (((2,),), 8)}) is None


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


def sdpa(q, k, v, mask):
    """The attention that was there before, as the contract hands it to a patch: [b, H, rows, D] -> [b, rows, H*D]."""
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def layouts(reg):
    """name: (the call's own layout, tokens after its segments, a one-row additive mask)."""
    seg, lay = reg.layout.Segment, reg.layout.Layout
    return {
        "text first": (reg.layout.text_then_image(10, (4, 5)), 0, False),
        "image first (HiDream)": (lay((seg("image", 0, 20), seg("text", 20, 10, "prompt", 10)), (4, 5)), 0, False),
        "caption and image padding, reference tokens (Z-Image, Kontext)": (
            lay((seg("text", 0, 16, "prompt", 11), seg("image", 16, 15), seg("pad", 31, 1)), (3, 5),
                references=True), 17, False),
        "one-row additive mask (Qwen-Image)": (reg.layout.text_then_image(10, (4, 5)), 0, True),
    }


@pytest.mark.parametrize("name", ["text first", "image first (HiDream)",
                                  "caption and image padding, reference tokens (Z-Image, Kontext)",
                                  "one-row additive mask (Qwen-Image)"])
def test_deleaker_through_each_layout_matches_dense(reg, dl, name):
    """q, k, v in the call's own order, reordered text first as the driver does, edited, and put back: the dense
    reference on the call's own order."""
    own, trailing, row_mask = layouts(reg)[name]
    length = own.length + trailing
    assert own.fits(length) == "main"
    layout, order = own.text_first()
    heads, d, n = 2, 8, own.n_img
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, heads, length, d, generator=g) for _ in range(3))
    text0 = next(s.start for s in own.segments if s.kind == "text")
    layout = layout.with_phrases({"prompt": (((1, 2), (5,)), 10 if own.text_len == 10 else 11)})
    entities = tuple(tuple(text0 + p for p in e) for e in ((1, 2), (5,)))  # in the call's own order
    img = list(range(own.image.start, own.image.stop))
    masks = torch.zeros(2, n, dtype=torch.bool)
    masks[0, :9], masks[1, 6:15] = True, True
    st = dl.Settings()
    bias = None
    if row_mask:
        bias = torch.zeros(1, 1, length)
        bias[0, 0, 3] = -1e4  # a padded text row nobody attends to
        bias[0, 0, 10 + 2] = -0.7
    index = torch.tensor((order or list(range(own.length))) + list(range(own.length, length)))
    qc, kc, vc = (t.index_select(2, index) for t in (q, k, v))
    mask = None if bias is None else bias.index_select(-1, index)
    out = dl.deleaker_attention(qc, kc, vc, sdpa, [dl.MaskPlan(masks, st)], layout, st, [0], mask)
    ours = torch.empty_like(out).index_copy_(1, index, out)
    ref_bias = None if bias is None else bias[0].expand(length, length)
    ref = dense(q[0], k[0], v[0], img, entities, masks, st, ref_bias).transpose(0, 1).reshape(length, -1)
    assert torch.allclose(ours[0].double(), ref, atol=2e-5)
