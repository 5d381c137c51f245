"""The sampling core's layouts, read from the call (issue 23 §7) and what the patches show (issue 26), on the tiny
models and ComfyUI's own attention: HiDream-E1's condition image joined to the latent, Z-Image's reference latents
refused, a call whose layout Leakless does not know left alone and said once, self- and cross-attention told apart
by what the call is (SDXL at 176x112 px, where a level has 77 image tokens), the heatmap placed before DeLeaker,
Heatmap Show on images of another size, and masks on a latent padded to whole patches."""

import pytest
import torch
from test_deleaker_families import deleak
from test_deleaker_families import latent as dit_latent
from test_heatmap import heat
from test_heatmap import loaded as loaded  # noqa: F401 - the tiny models, loaded once
from test_tiny_text_encoders import one_thread  # noqa: F401 - the fixture applies here too


def sample(parts, model, positive=None, lat=None, cfg=1.0, negative=None):
    positive = positive or parts["cond"]
    return parts["nodes"].KSampler().sample(model, 5, 2, cfg, "euler", "simple", positive, negative or positive,
                                            lat)[0]["samples"]


def with_values(conditioning, **values):
    return [[c, {**meta, **values}] for c, meta in conditioning]


def deleaker_parts(loaded, family):
    """The family's tiny model and CLIP, with DeLeaker Encode's conditioning and entities."""
    parts = dict(loaded(family))
    cond, spec = parts["m"]["LeaklessDeLeakerEncode"].execute(clip=parts["clip"], text="a **red cat** beside a "
                                                              "**blue dog**", entities="").args
    return {**parts, "cond": cond, "spec": spec}


def test_hidream_e1_grid_is_read_from_the_call(loaded):
    """HiDream-E1 joins its condition image to the latent's right inside the model: h x 2w image tokens. DeLeaker
    masks the whole grid the model attends (every main call fits its layout: nothing is said), and DeLeaker Masks
    and the heatmap show the latent's own half."""
    parts = deleaker_parts(loaded, "hidream")
    lat = dit_latent("hidream", w=96, h=64)
    condition = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    positive = with_values(parts["cond"], concat_latent_image=condition)
    patched, masks = deleak({**parts}, mask_threshold=-1.0)
    out = sample(parts, patched, positive, lat)
    record = masks.last
    assert record.value.grid == (4, 12) and record.value.window == (0, 0, 4, 6) and record.notes == ()
    assert record.value.masks.shape == (1, 2, 48) and bool(record.value.masks.any(dim=-1).all())
    assert not torch.equal(out, sample(parts, parts["model"], positive, lat))
    images = torch.rand(1, 64, 96, 3)
    mask, _ = parts["m"]["LeaklessDeLeakerMasks"].execute(masks=masks, images=images, opacity=0.5,
                                                          samples={"samples": out}).args
    cells = record.value.masks.float().reshape(2, 4, 12)[:, :, :6]  # the latent's half, 16 px per cell
    assert torch.equal(mask, cells.repeat_interleave(16, 1).repeat_interleave(16, 2))
    heatmapped, maps = heat({**parts, "spec": parts["spec"]})
    assert torch.equal(sample(parts, heatmapped, positive, lat), sample(parts, parts["model"], positive, lat))
    assert maps.last.value.maps.shape == (1, 2, 4, 12) and maps.last.value.window == (0, 0, 4, 6)


def test_z_image_reference_latents_are_refused(loaded):
    import inspect

    import comfy.model_base

    if "ref_latents" not in inspect.getsource(comfy.model_base.Lumina2.extra_conds):
        pytest.skip("this ComfyUI's Z-Image reads no reference latents")
    parts = deleaker_parts(loaded, "z_image")
    positive = with_values(parts["cond"], reference_latents=[torch.zeros(1, 16, 8, 8)])
    patched, _ = deleak(parts)
    with pytest.raises(ValueError, match=r"Leakless DeLeaker: input 'model': the model call holds reference latents "
                                         r".*between the caption and the image.*Fix: remove them"):
        sample(parts, patched, positive, dit_latent("z_image"))


def test_a_layout_leakless_does_not_know_is_left_alone_and_said_once(comfy_nodes, leakless):
    """The driver on ComfyUI's own attention with calls of a known layout (FLUX: 8 text rows, 16 image tokens) and
    calls it cannot explain (more tokens, no references): those run unchanged, and the run is told once."""
    import comfy.ldm.modules.attention as attention
    from leakless.nodes.driver import patching
    from leakless.nodes.methods import contract, deleaker
    from leakless.nodes.methods.deleaker_patch import DeLeakerPatch
    from leakless.nodes.methods.phrases import Phrases
    from leakless.nodes.registry import layout, models

    entry = models.BY_ID["flux"]
    patch = DeLeakerPatch(Phrases(("cat", "dog"), ((1,), (3,)), 8), deleaker.Settings(beta_text=-1.0), 0.6)
    installed = patching.Installed("Leakless DeLeaker", patch, entry, "key")
    installed.override = object()
    run = patching._Run(patch.new_run({}))
    view = contract.ModelCall(entry, 1, (0,), ("e",), 0, 2, layout.text_then_image(8, (4, 4)), 2, 1)
    call = patching._Call(run, view, patch.begin(run.state, view))
    g = torch.Generator().manual_seed(0)
    func = attention.optimized_attention

    def attend(length):
        q, k, v = (torch.randn(1, 2, length, 8, generator=g) for _ in range(3))
        to = {"key" + patching.CALL_SUFFIX: call}
        out = installed.attention(func, None, (q, k, v, 2), {"skip_reshape": True, "transformer_options": to})
        return out, func(q, k, v, 2, skip_reshape=True)

    edited, plain = attend(24)
    assert not torch.equal(edited, plain)  # a main call of the known layout: edited
    for _ in range(2):
        left, plain = attend(30)  # 6 tokens too many
        assert torch.equal(left, plain)
    assert len(run.notes) == 1 and "does not fit the layout Leakless knows" in run.notes[0]
    installed._after(call, {"optimized_attention_override": installed.override})
    assert len(run.notes) == 2 and "1 of this model call's attention calls had the layout" in run.notes[1]


def test_sdxl_cross_attention_with_77_image_tokens_is_recorded(loaded):
    """At 176x112 px the tiny SDXL UNet's second level has 11 x 7 = 77 image tokens, as many as the context has
    rows: the heatmap tells its cross-attention from its self-attention by the call ComfyUI announces, not by a
    length, so that level is recorded and Heatmap Show works."""
    parts = loaded("sdxl")
    lat = {"samples": torch.zeros(1, 4, 14, 22)}
    patched, results = heat(parts)
    out = sample(parts, patched, lat=lat)
    assert torch.equal(out, sample(parts, parts["model"], lat=lat))
    record = results.last
    assert record.value.maps.shape == (1, 2, 14, 22) and bool((record.value.maps.flatten(-2).amax(-1) > 0).all())
    images = torch.rand(1, 112, 176, 3)
    mask, overlay = parts["m"]["LeaklessHeatmapShow"].execute(heatmaps=results, images=images, opacity=0.6,
                                                              samples={"samples": out}).args
    assert mask.shape == (2, 112, 176) and overlay.shape == (2, 112, 176, 3)


def test_heatmap_before_deleaker_is_refused_and_after_it_records(loaded):
    parts = deleaker_parts(loaded, "flux")
    heated, _ = heat(parts)
    with pytest.raises(ValueError, match=r"Leakless DeLeaker: input 'model': this model already carries Leakless "
                                         r"Attention Heatmap.*Fix: apply Leakless Attention Heatmap after Leakless "
                                         r"DeLeaker"):
        deleak({**parts, "model": heated})
    deleaked, _ = deleak(parts)
    after, results = heat({**parts, "model": deleaked})
    lat = {"samples": torch.zeros(1, 16, 8, 12)}
    out = sample(parts, after, lat=lat)
    assert torch.equal(out, sample(parts, deleaked, lat=lat))  # the heatmap reads; DeLeaker edits
    assert results.last.value.maps.shape == (1, 2, 4, 6)


def test_heatmap_show_refuses_images_of_another_size(loaded):
    parts = loaded("sdxl")
    patched, results = heat(parts)
    out = sample(parts, patched, lat={"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(ValueError, match=r"Leakless Heatmap Show: input 'images': 1 image\(s\) of 32x32 px do not "
                                         r"match the sampling they belong to \(1 latent\(s\) of 8x8, decoded to "
                                         r"64x64 px\)"):
        parts["m"]["LeaklessHeatmapShow"].execute(heatmaps=results, images=torch.rand(1, 32, 32, 3), opacity=0.6,
                                                  samples={"samples": out})


def test_masks_on_a_latent_padded_to_whole_patches(loaded):
    """72x136 px: a 9x17 latent, padded to 10x18 for 2x2 patches, a 5x9 token grid covering 80x144 px. The masks
    are each cell's 16x16 px, cut at the image's edge, not stretched over it."""
    parts = deleaker_parts(loaded, "flux")
    patched, masks = deleak(parts, mask_threshold=-1.0)
    out = sample(parts, patched, lat={"samples": torch.zeros(1, 16, 9, 17)})
    grid = masks.last.value.masks.float().reshape(2, 5, 9)
    mask, _ = parts["m"]["LeaklessDeLeakerMasks"].execute(masks=masks, images=torch.rand(1, 72, 136, 3), opacity=0.5,
                                                          samples={"samples": out}).args
    full = grid.repeat_interleave(16, 1).repeat_interleave(16, 2)
    assert torch.equal(mask, full[:, :72, :136])
