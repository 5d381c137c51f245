"""Leakless Attention Heatmap on tiny models loaded by the standard loaders (FLUX.1, SDXL, SD1.5, Qwen-Image,
Z-Image): the image is bit-identical with the patch on, the maps are finite, per image and word, and not constant,
with cfg 1 and > 1 (a negative of another length), batch 2, non-square latents and SamplerCustomAdvanced; over
ComfyUI's own SDPA attention (a chained override, and 0.33.0's ModelAttentionBackend) the patch returns the fused
kernel's output, found bit-identical to the model's, and reads the scores off its lse: the image is still
bit-identical; Heatmap Show's outputs; bad input. The pure part is proved against a dense reference in
tests/unit/test_heatmap_pure.py."""

import pytest
import torch

import tiny_models
from test_deleaker_families import load_tiny
from test_tiny_diffusion_models import LATENTS
from test_tiny_text_encoders import family_or_skip, one_thread  # noqa: F401 - the fixture applies here too

TEXT = "a **red cat** beside a **blue dog**"
FAMILIES = ["flux", "sdxl", "sd15", "qwen_image", "z_image"]
OTHER_JOINT = sorted(set(tiny_models.DIFFUSION_MODELS) - set(FAMILIES))  # FLUX.2, Krea 2, SD3, HiDream
CHECKPOINTS = {"sdxl": "sd_xl_base_1.0.safetensors", "sd15": "v1-5-pruned-emaonly.safetensors"}
WINDOW = dict(start_percent=0.0, end_percent=1.0, first_block=0.0, last_block=1.0)


@pytest.fixture(scope="module")
def loaded(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    cache = {}

    def load(family):
        if family not in cache:
            if family in CHECKPOINTS:
                model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINTS[family])
            elif family == "flux":
                model = nodes.UNETLoader().load_unet("flux1-dev.safetensors", "default")[0]
                clip = nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]
                vae = None
            else:
                (clip, model), vae = load_tiny(nodes, family), None
            cond, spec = m["LeaklessHeatmapEncode"].execute(clip=clip, text=TEXT, words="").args
            negative = nodes.CLIPTextEncode().encode(clip, "blurry, " * 50)[0]  # longer than one CLIP chunk
            cache[family] = {"nodes": nodes, "m": m, "clip": clip, "model": model, "vae": vae, "cond": cond,
                             "spec": spec, "negative": negative, "family": family}
        return cache[family]

    return load


@pytest.fixture(params=FAMILIES)
def parts(request, loaded):
    return loaded(request.param)


def latent(family, batch=1, w=96, h=64):
    if family in ("sdxl", "sd15", "flux"):
        channels, down = (4,) if family != "flux" else (16,), 8
    else:
        *channels, size, _ = LATENTS[family]  # at 64x64 px
        down = 64 // size
    return {"samples": torch.zeros(batch, *channels, h // down, w // down)}


def map_grid(family, w=96, h=64):
    """The maps' grid: the latent's for a UNet, the image token grid (2x2 patches) for a joint model."""
    down = 8 if family in CHECKPOINTS else 16
    return h // down, w // down


def heat(parts, model=None, **window):
    return parts["m"]["LeaklessAttentionHeatmap"].execute(model=model or parts["model"], entities=parts["spec"],
                                                          **{**WINDOW, **window}).args


def sample(parts, model, cfg=1.0, batch=1, negative=None):
    nodes = parts["nodes"]
    return nodes.KSampler().sample(model, 5, 3, cfg, "euler", "simple", parts["cond"], negative or parts["cond"],
                                   latent(parts["family"], batch))[0]["samples"]


def check_maps(maps, images, family):
    assert maps.shape == (images, 2, *map_grid(family))
    assert torch.isfinite(maps).all() and bool((maps >= 0).all())
    spread = maps.flatten(-2)
    assert bool((spread.amax(-1) > spread.amin(-1)).all())  # every word's map varies over the image


def test_bit_identical_and_maps_per_word(parts):
    plain = sample(parts, parts["model"])
    patched, results = heat(parts)
    out = sample(parts, patched)
    assert torch.equal(out, plain)
    check_maps(results.last.value.maps, 1, parts["family"])
    assert results.last.value.names == ("red cat", "blue dog")
    assert "optimized_attention_override" not in parts["model"].model_options.get("transformer_options", {})


def sdpa_attention(func, *args, **kwargs):
    """A chained attention override that runs ComfyUI's own PyTorch (SDPA) attention, as a user's backend node
    does (ComfyUI's default on NVIDIA; its CPU default is the sub-quadratic attention)."""
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def read_paths(monkeypatch, patched):
    """Counts the heatmap's calls of its two ways to score: off the fused call's lse, or in a pass of its own."""
    import sys

    override = patched.model_options["transformer_options"]["optimized_attention_override"]
    deleaker = sys.modules[type(override.installed.patch).__module__].deleaker
    seen = {"fused": 0, "own pass": 0}
    for name, key in (("scores_from_lse", "fused"), ("entity_scores", "own pass")):
        original = getattr(deleaker, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            seen[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(deleaker, name, counted)
    return seen


@pytest.mark.parametrize("family", ["flux", "sdxl", "qwen_image", "hidream"])
def test_bit_identical_on_the_fused_path(loaded, family, monkeypatch):
    """Over ComfyUI's SDPA attention the driver finds the fused kernel bit-identical to the model's attention, so
    the patch returns its output and reads the scores off its lse: the latents stay bit-identical (joint, UNet
    cross-attention, image-first HiDream), the maps are the ones the separate pass gives."""
    parts = loaded(family)
    over_sdpa = parts["model"].clone()
    over_sdpa.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sdpa_attention
    patched, results = heat(parts, model=over_sdpa)
    seen = read_paths(monkeypatch, patched)
    out = sample(parts, patched, cfg=2.0, negative=parts["negative"])
    assert torch.equal(out, sample(parts, over_sdpa, cfg=2.0, negative=parts["negative"]))
    assert seen["fused"] > 0 and seen["own pass"] == 0
    fast = results.last.value.maps
    slow_model, slow = heat(parts)  # the CPU default (sub-quadratic attention): the separate pass
    seen = read_paths(monkeypatch, slow_model)
    assert torch.equal(sample(parts, slow_model, cfg=2.0, negative=parts["negative"]),
                       sample(parts, parts["model"], cfg=2.0, negative=parts["negative"]))
    assert seen["own pass"] > 0 and seen["fused"] == 0
    assert torch.allclose(fast, slow.last.value.maps, atol=1e-4)  # two attentions' float rounding apart


def test_bit_identical_over_model_attention_backend(loaded, monkeypatch):
    """ComfyUI 0.33.0's ModelAttentionBackend (PyTorch attention) before the heatmap: the fused path, bit-identical."""
    parts = loaded("flux")
    if "ModelAttentionBackend" not in parts["m"]:
        pytest.skip("ModelAttentionBackend is new in ComfyUI 0.33.0")
    chosen = parts["m"]["ModelAttentionBackend"]().patch(parts["model"], "pytorch attention")[0]
    patched, _ = heat(parts, model=chosen)
    seen = read_paths(monkeypatch, patched)
    assert torch.equal(sample(parts, patched), sample(parts, chosen))
    assert seen["fused"] > 0 and seen["own pass"] == 0


@pytest.mark.parametrize("family", OTHER_JOINT)
def test_every_other_joint_family(loaded, family):
    """Image first (HiDream), left padding (FLUX.2), CLIP then T5 rows (SD3), Krea 2: identical, maps per word."""
    parts = loaded(family)
    patched, results = heat(parts)
    assert torch.equal(sample(parts, patched, cfg=2.0, negative=parts["negative"]),
                       sample(parts, parts["model"], cfg=2.0, negative=parts["negative"]))
    maps = results.last.value.maps
    assert maps.shape[:2] == (1, 2) and maps.shape[2] * 3 == maps.shape[3] * 2 and torch.isfinite(maps).all()
    spread = maps.flatten(-2)
    assert bool((spread.amax(-1) > spread.amin(-1)).all())


def test_cfg_negative_of_another_length_batch_two(parts):
    patched, results = heat(parts, start_percent=0.3, end_percent=0.7, first_block=0.5)
    out = sample(parts, patched, cfg=3.0, batch=2, negative=parts["negative"])
    assert torch.equal(out, sample(parts, parts["model"], cfg=3.0, batch=2, negative=parts["negative"]))
    check_maps(results.last.value.maps, 2, parts["family"])


def test_each_run_has_its_own_maps_and_show_outputs(loaded):
    parts = loaded("sdxl")
    patched, results = heat(parts)
    first = sample(parts, patched)
    second = parts["nodes"].KSampler().sample(patched, 6, 3, 1.0, "euler", "simple", parts["cond"], parts["cond"],
                                              latent("sdxl", 2))[0]["samples"]
    assert len(results.runs) == 2 and not torch.equal(results.runs[0].value.maps, results.runs[1].value.maps[:1])
    show = parts["m"]["LeaklessHeatmapShow"]
    images = torch.rand(1, 64, 96, 3)
    mask, overlay = show.execute(heatmaps=results, images=images, opacity=0.6, samples={"samples": first}).args
    assert mask.shape == (2, 64, 96) and overlay.shape == (2, 64, 96, 3)
    assert float(mask.amin()) >= 0 and torch.allclose(mask.flatten(1).amax(-1), torch.ones(2))
    assert torch.equal(show.execute(heatmaps=results, images=images, opacity=0.0,
                                    samples={"samples": first}).args[1], images.repeat_interleave(2, 0))
    out = show.execute(heatmaps=results, images=torch.rand(2, 64, 96, 3), opacity=0.6, samples={"samples": second})
    assert out.args[0].shape == (4, 64, 96) and out.ui["text"] == ["Words, in order: red cat, blue dog (2 image(s) "
                                                                   "x 2 word(s))."]
    with pytest.raises(ValueError, match=r"Leakless Heatmap Show: input 'images': 1 image\(s\) of 96x64 px do not "
                       r"match"):
        show.execute(heatmaps=results, images=images, opacity=0.6, samples={"samples": second})
    with pytest.raises(ValueError, match="Leakless Heatmap Show: input 'samples': these latents were not made by a "
                       "sampler that uses this Leakless Attention Heatmap model"):
        show.execute(heatmaps=results, images=images, opacity=0.6, samples={"samples": first + 1})


def test_sampler_custom_advanced_graph(comfy_nodes, leakless):
    """The whole graph through ComfyUI's executor: SDXL, SamplerCustomAdvanced with cfg 2, a non-square latent,
    Heatmap Show tied to the sampler's LATENT."""
    import comfy_env

    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINTS["sdxl"]}},
        "2": {"class_type": "LeaklessHeatmapEncode", "inputs": {"clip": ["1", 1], "text": "a red cat on a sofa",
                                                                "words": "cat, sofa"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "LeaklessAttentionHeatmap", "inputs": {"model": ["1", 0], "entities": ["2", 1], **WINDOW}},
        "5": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "cfg": 2.0}},
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "simple", "steps": 2,
                                                         "denoise": 1.0}},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 1}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["8", 0], "guider": ["5", 0],
                                                                 "sampler": ["6", 0], "sigmas": ["7", 0],
                                                                 "latent_image": ["9", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "LeaklessHeatmapShow", "inputs": {"heatmaps": ["4", 1], "images": ["11", 0],
                                                               "opacity": 0.6, "samples": ["10", 0]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 1]}},
    }
    outputs = comfy_env.run_prompt(g)
    assert outputs["12"]["text"] == ["Words, in order: cat, sofa (1 image(s) x 2 word(s))."]
    assert len(outputs["13"]["images"]) == 2


def test_bad_input(loaded):
    flux, sdxl = loaded("flux"), loaded("sdxl")
    encode, patch = flux["m"]["LeaklessHeatmapEncode"], flux["m"]["LeaklessAttentionHeatmap"]
    with pytest.raises(ValueError, match=r"^Leakless Heatmap Encode: input 'words': no words given; .* Fix: name one "
                       r"or more words"):
        encode.execute(clip=flux["clip"], text="a cat", words="")
    with pytest.raises(ValueError, match=r"^Leakless Heatmap Encode: input 'words': 'dog' is not in the prompt"):
        encode.execute(clip=sdxl["clip"], text="a cat", words="cat, dog")
    with pytest.raises(ValueError, match=r"^Leakless Attention Heatmap: input 'model': it reads text-image attention, "
                       r"which this model \(\w+\) .* Fix: connect a model of: FLUX.2"):
        patch.execute(model=sdxl["vae"].patcher, entities=sdxl["spec"], **WINDOW)
    with pytest.raises(ValueError, match=r"^Leakless Attention Heatmap: input 'entities': they come from a SDXL "
                       r"prompt, and the model is FLUX.1"):
        patch.execute(model=flux["model"], entities=sdxl["spec"], **WINDOW)
    with pytest.raises(ValueError, match=r"^Leakless Attention Heatmap: input 'last_block': 0.2 is below first_block"):
        patch.execute(model=flux["model"], entities=flux["spec"], **{**WINDOW, "first_block": 0.5, "last_block": 0.2})
    other, _ = encode.execute(clip=sdxl["clip"], text="a dog and a cat in a barn " * 4, words="cat").args
    patched, _ = heat(sdxl)
    with pytest.raises(ValueError, match="Leakless Attention Heatmap: input 'entities'"):
        sdxl["nodes"].KSampler().sample(patched, 5, 1, 1.0, "euler", "simple", other, other, latent("sdxl"))
