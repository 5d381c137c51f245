"""Leakless DeLeaker on the tiny model of every joint-attention family (issue 14 §2), each loaded by its standard
loaders under its template file names: the adapter's layout holds in every main attention call, the patch edits,
finds every entity and leaves the image bit-identical when off, with cfg > 1, a negative of another length,
batch 2, non-square latents and the samplers; on both ComfyUI versions where the family exists."""

import pytest
import torch

import tiny_models
from test_tiny_diffusion_models import LATENTS
from test_tiny_text_encoders import family_or_skip, one_thread  # noqa: F401 - the fixture applies here too

TEXT = "a **red cat** beside a **blue dog**"
SETTINGS = dict(mask_threshold=-1.0, image_threshold=1.0, alpha=1.2, mask_history=0.6, cross_text=True,
                self_text=True, image_image=True, alpha_per_pair=False, overlap="reference")
FAMILIES = sorted(tiny_models.DIFFUSION_MODELS)


def load_tiny(nodes, family):
    """(CLIP, MODEL) of a family's tiny text encoder and DiT, through its standard loaders (skipped where absent)."""
    loader, inputs = family_or_skip(family)
    node = nodes.NODE_CLASS_MAPPINGS[loader]()
    clip = getattr(node, node.FUNCTION)(**inputs)[0]
    return clip, nodes.UNETLoader().load_unet(tiny_models.DIFFUSION_MODELS[family][2], "default")[0]


@pytest.fixture(scope="module")
def loaded(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    cache = {}

    def load(family):
        if family not in cache:
            clip, model = load_tiny(nodes, family)
            cond, spec = m["LeaklessDeLeakerEncode"].execute(clip=clip, text=TEXT, entities="").args
            empty = nodes.CLIPTextEncode().encode(clip, "")[0]
            cache[family] = {"nodes": nodes, "m": m, "clip": clip, "model": model, "cond": cond, "spec": spec,
                             "empty": empty}
        return cache[family]

    return load


def latent(family, batch=1, w=96, h=64):
    *channels, lh, lw = LATENTS[family]  # at 64x64 px
    down = 64 // lw
    return {"samples": torch.zeros(batch, *channels, h // down, w // down)}


def deleak(parts, **overrides):
    return parts["m"]["LeaklessDeLeaker"].execute(model=parts["model"], entities=parts["spec"],
                                                  **{**SETTINGS, **overrides}).args


def sample(parts, model, negative=None, cfg=1.0, batch=1, sampler="KSampler", steps=3, w=96, h=64, denoise=1.0,
           start=None):
    nodes, positive = parts["nodes"], parts["cond"]
    negative = negative or positive
    lat = start or latent(parts["family"], batch, w, h)
    if sampler == "KSampler":
        return nodes.KSampler().sample(model, 5, steps, cfg, "euler", "simple", positive, negative, lat,
                                       denoise=denoise)[0]["samples"]
    return nodes.KSamplerAdvanced().sample(model, "enable", 5, steps, cfg, "euler", "simple", positive, negative, lat,
                                           0, 10000, "disable")[0]["samples"]


@pytest.fixture(params=FAMILIES)
def parts(request, loaded):
    return {**loaded(request.param), "family": request.param}


def call_lengths(model):
    """A clone of `model` whose attention override records each call's sequence length."""
    lengths = []

    def spy(func, *args, **kwargs):
        q = args[0]
        lengths.append(q.shape[2] if kwargs.get("skip_reshape") else q.shape[1])
        return func(*args, **kwargs)

    clone = model.clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    return clone, lengths


def test_patches_finds_every_entity_and_is_identity_when_off(parts):
    plain = sample(parts, parts["model"])
    patched, masks = deleak(parts)
    out = sample(parts, patched)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    run = masks.last.value
    assert run.masks.shape[:2] == (1, 2) and bool(run.masks.any(dim=-1).all())
    assert run.grid[0] * 3 == run.grid[1] * 2  # the 96x64 latent's grid, not a square one
    off = parts["m"]["LeaklessDeLeaker"].execute(model=parts["model"], entities=parts["spec"],
                                                 **{**SETTINGS, "cross_text": False, "self_text": False,
                                                    "image_image": False}).args[0]
    assert torch.equal(sample(parts, off), plain)
    none = parts["m"]["LeaklessDeLeaker"].execute(model=parts["model"], **SETTINGS).args[0]
    assert torch.equal(sample(parts, none), plain)


def test_every_main_call_has_the_layout_the_adapter_says(parts):
    """The model's own attention calls: as many main calls per model call as the adapter counts blocks, each as
    long as the layout the registry gives (the text, the image grid, Z-Image's padding of the image tokens to a
    multiple of 32); every other call (refiners, text fusion, image-only attention) shorter."""
    from leakless.nodes.registry import models

    spied, lengths = call_lengths(parts["model"])
    lat = latent(parts["family"])
    sample(parts, spied, steps=1, start=lat)
    dm = parts["model"].model.diffusion_model
    entry = models.model_of([c.__name__ for c in type(parts["model"].model.model_config).__mro__])
    llama = parts["cond"][0][1].get("conditioning_llama3")
    rows = parts["cond"][0][0].shape[1]
    rows = max(rows, 512) if entry.left_padded else rows  # FLUX.2: ComfyUI's Flux2.extra_conds pads to 512
    layout = models.call_layout(entry, dm, lat["samples"].shape, rows, {"encoder_hidden_states_llama3": llama})
    main = [n for n in lengths if n >= layout.length]  # Z-Image pads its image tokens to a multiple of 32 too
    assert set(main) == {layout.length} and len(main) == entry.block_counts(dm)[0]


@pytest.mark.parametrize("sampler", ["KSampler", "KSamplerAdvanced"])
def test_cfg_negative_of_another_length_batch_two(parts, sampler):
    patched, masks = deleak(parts)
    out = sample(parts, patched, negative=parts["empty"], cfg=2.0, batch=2, sampler=sampler)
    plain = sample(parts, parts["model"], negative=parts["empty"], cfg=2.0, batch=2, sampler=sampler)
    assert out.shape[0] == 2 and torch.isfinite(out).all() and not torch.equal(out, plain)
    assert masks.last.value.masks.shape[0] == 2  # per-sample masks for the two cond rows


def test_img2img_and_input_untouched(parts):
    shape = latent(parts["family"])["samples"].shape
    start = {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(3))}
    before = start["samples"].clone()
    plain = sample(parts, parts["model"], denoise=0.6, start=start)
    patched, _ = deleak(parts)
    out = sample(parts, patched, denoise=0.6, start=start)
    assert torch.isfinite(out).all() and not torch.equal(out, plain) and torch.equal(start["samples"], before)
    assert "optimized_attention_override" not in parts["model"].model_options.get("transformer_options", {})
    assert torch.equal(sample(parts, parts["model"], denoise=0.6, start=start), plain)


def test_entities_from_another_family_are_refused(loaded):
    sd3, qwen = loaded("sd3"), loaded("qwen_image")
    with pytest.raises(ValueError, match=r"Leakless DeLeaker: input 'entities': they come from a Qwen-Image prompt, "
                       r"and the model is SD3 / SD3.5\. Fix: encode the prompt"):
        sd3["m"]["LeaklessDeLeaker"].execute(model=sd3["model"], entities=qwen["spec"], **SETTINGS)


def test_two_stacked_patches_in_a_sampler_custom_advanced_graph(parts):
    """A real graph: the family's loaders, DeLeaker Encode, two DeLeaker patches stacked over the model, cfg 2
    with a negative of another length through CFGGuider and SamplerCustomAdvanced."""
    import comfy_env

    loader, inputs = family_or_skip(parts["family"])
    _, _, unet, empty_latent = tiny_models.DIFFUSION_MODELS[parts["family"]]
    patch = dict(SETTINGS)
    graph = {
        "1": {"class_type": loader, "inputs": inputs},
        "2": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "3": {"class_type": "LeaklessDeLeakerEncode", "inputs": {"clip": ["1", 0], "text": TEXT, "entities": ""}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": ""}},
        "5": {"class_type": "LeaklessDeLeaker", "inputs": {"model": ["2", 0], "entities": ["3", 1], **patch}},
        "6": {"class_type": "LeaklessDeLeaker", "inputs": {"model": ["5", 0], "entities": ["3", 1],
                                                           **{**patch, "alpha": 1.5}}},
        "7": {"class_type": "CFGGuider", "inputs": {"model": ["6", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "cfg": 2.0}},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "10": {"class_type": "BasicScheduler", "inputs": {"model": ["6", 0], "scheduler": "simple", "steps": 2,
                                                          "denoise": 1.0}},
        "11": {"class_type": empty_latent, "inputs": {"width": 96, "height": 64, "batch_size": 2}},
        "12": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["8", 0], "guider": ["7", 0],
                                                                 "sampler": ["9", 0], "sigmas": ["10", 0],
                                                                 "latent_image": ["11", 0]}},
        "13": {"class_type": "TinyTestLatentInfo", "inputs": {"samples": ["12", 0]}},
    }
    (info,) = comfy_env.run_prompt(graph)["13"]["latent"]
    assert info == {"shape": list(latent(parts["family"], batch=2)["samples"].shape), "finite": True}
