"""The tiny DiTs of the newer families (issue 13 §4) load through UNETLoader under their template file names and
sample one KSampler step at 64×64 with their tiny text encoders, headless, on both ComfyUI versions where the
family exists. For the families whose tiny models come before the pack's registry has them (HunyuanImage 2.1,
Lumina 2), every attention call of one step is pinned too: the facts the registry needs (tests/data/new_families.md)."""

import pytest

import comfy_env
import tiny_models
from test_tiny_text_encoders import family_or_skip, one_thread  # noqa: F401 - the fixture applies here too

# family: the latent KSampler returns for 64×64 (channels, [frames,] height, width; Qwen-Image uses the Wan 2.1 format)
LATENTS = {"qwen_image": (16, 1, 8, 8), "z_image": (16, 8, 8), "flux2": (128, 4, 4), "flux2_klein": (128, 4, 4),
           "krea2": (16, 1, 8, 8), "sd3": (16, 8, 8), "hidream": (16, 8, 8), "hunyuan_image": (64, 2, 2),
           "lumina2": (16, 8, 8)}


def model_or_skip(family):
    """The family's tiny text encoder (loader, inputs), or a skip where this ComfyUI lacks the family's DiT or its
    text encoder."""
    import comfy.supported_models

    model = tiny_models.DIFFUSION_MODELS[family][0]
    if not hasattr(comfy.supported_models, model):
        pytest.skip(f"ComfyUI {comfy_env.COMFY_NAME} has no {model} model")
    return family_or_skip(family)


def sample_graph(family):
    loader, inputs = model_or_skip(family)
    _, _, unet, empty_latent = tiny_models.DIFFUSION_MODELS[family]
    return {
        "1": {"class_type": loader, "inputs": inputs},
        "2": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "a red cat"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": ""}},
        "5": {"class_type": empty_latent, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 1, "steps": 1, "cfg": 2.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "7": {"class_type": "TinyTestLatentInfo", "inputs": {"samples": ["6", 0]}},
    }


@pytest.mark.parametrize("family", sorted(tiny_models.DIFFUSION_MODELS))
def test_samples_one_step(comfy_nodes, family):
    (latent,) = comfy_env.run_prompt(sample_graph(family))["7"]["latent"]
    assert latent == {"shape": [1, *LATENTS[family]], "finite": True}


# The structure of the new families' DiTs as ComfyUI builds them: (model_base class, supported-models config class,
# block lists, the patch-size attribute's value, latent channels, spatial downscale of the template's empty latent).
STRUCTURE = {
    "hunyuan_image": ("HunyuanImage21", "HunyuanImage21", {"double_blocks": 1, "single_blocks": 1}, [1, 1], 64, 32),
    "lumina2": ("Lumina2", "Lumina2", {"layers": 2}, 2, 16, 8),  # Z-Image: model_base.Lumina2 too, config ZImage
}
# What latent_format.spacial_downscale_ratio says (0.3.75's latent formats have no such attribute: the downscale is
# only in the empty-latent node there, `// 32` for HunyuanImage).
FORMAT_DOWNSCALE = {("hunyuan_image", "0.33.0"): 32, ("hunyuan_image", "0.3.75"): None, ("lumina2", "0.33.0"): 8,
                    ("lumina2", "0.3.75"): None}
# Every attention call through transformer_options["optimized_attention_override"] in one step (cfg 1, "a red cat",
# 64×64) as (q length, k length, heads, head size, block_type, block_index, total_blocks, img_slice); all are
# skip_reshape ([B, H, L, D]) and pass no mask. HunyuanImage: its text refiner's 2 calls (the 4 Qwen rows, no block
# info), double block 0, single block 0 over 4 text + 4 image tokens. Lumina 2: the context refiner (4 caption rows),
# the noise refiner (16 image tokens), then the 2 main layers; 0.3.75's NextDiT sets no block info at all, nor does
# its HunyuanVideo set img_slice.
REFINER_H = (4, 4, 1, 128, None, None, None, None)
CALLS = {
    ("hunyuan_image", "0.33.0"): [REFINER_H, REFINER_H, (8, 8, 1, 128, "double", 0, 1, None),
                                  (8, 8, 1, 128, "single", 0, 1, [4, 8])],
    ("hunyuan_image", "0.3.75"): [REFINER_H, REFINER_H, (8, 8, 1, 128, "double", 0, 1, None),
                                  (8, 8, 1, 128, "single", 0, 1, None)],
    ("lumina2", "0.33.0"): [(4, 4, 2, 96, None, None, None, None), (16, 16, 2, 96, None, None, None, None),
                            (20, 20, 2, 96, "double", 0, 2, None), (20, 20, 2, 96, "double", 1, 2, None)],
    ("lumina2", "0.3.75"): [(4, 4, 2, 96, None, None, None, None), (16, 16, 2, 96, None, None, None, None),
                            (20, 20, 2, 96, None, None, None, None), (20, 20, 2, 96, None, None, None, None)],
}
# The positions of the text in the main calls, measured (text_positions): "a red cat" (4 rows), and HunyuanImage's
# quoted prompt's 8 Qwen rows and 15 ByT5 rows. 0.3.75's HunyuanImage puts the image first in both block kinds
# (flipped_img_txt in its double blocks, cat((img, txt)) before its single blocks); 0.33.0 the text first. The ByT5
# rows follow the Qwen rows in both.
TEXT_POSITIONS = {
    ("hunyuan_image", "0.33.0"): {"text": range(0, 4), "qwen": range(0, 8), "byt5": range(8, 23),
                                  "single": "txt, img"},
    ("hunyuan_image", "0.3.75"): {"text": range(4, 8), "qwen": range(4, 12), "byt5": range(12, 27),
                                  "single": "img, txt"},
    ("lumina2", "0.33.0"): {"text": range(0, 4)},
    ("lumina2", "0.3.75"): {"text": range(0, 4)},
}
NEW_FAMILIES = sorted(tiny_models.NEW_FAMILIES)


@pytest.fixture(scope="module")
def loaded(comfy_nodes):
    import nodes

    cache = {}

    def load(family):
        if family not in cache:
            loader, inputs = model_or_skip(family)
            cls = nodes.NODE_CLASS_MAPPINGS[loader]
            clip = getattr(cls(), cls.FUNCTION)(**inputs)[0]
            model = nodes.UNETLoader().load_unet(tiny_models.DIFFUSION_MODELS[family][2], "default")[0]
            cache[family] = (clip, model)
        return cache[family]

    return load


def pinned(table, family):
    key = (family, comfy_env.COMFY_NAME)
    if key not in table:
        pytest.skip(f"the attention facts are pinned for the matrix's ComfyUI versions, not {comfy_env.COMFY_NAME}")
    return table[key]


def one_step(family, model, positive, single_block_input=False):
    """One seeded KSampler step at cfg 1 on a clone of `model` whose attention override records each call (q, k's
    shape, heads, skip_reshape, mask, the block keys of transformer_options); with `single_block_input`, also
    double block 0's (img, txt) output and single block 0's input, through ComfyUI's 'dit' block replacement."""
    import nodes

    calls, blocks = [], {}

    def spy(func, *args, **kwargs):  # transformer_options as they are now: some models mutate them as they go
        to = kwargs.get("transformer_options", {})
        calls.append((args[0].detach().clone(), args[1].shape, args[3], kwargs.get("skip_reshape"),
                      kwargs.get("mask"), tuple(to.get(k) for k in ("block_type", "block_index", "total_blocks",
                                                                     "img_slice"))))
        return func(*args, **kwargs)

    clone = model.clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    if single_block_input:
        def double(args, extra):
            out = extra["original_block"](args)
            blocks["double"] = (out["img"].clone(), out["txt"].clone())
            return out

        def single(args, extra):
            blocks["single"] = args["img"].clone()
            return extra["original_block"](args)

        clone.set_model_patch_replace(double, "dit", "double_block", 0)
        clone.set_model_patch_replace(single, "dit", "single_block", 0)
    cls = nodes.NODE_CLASS_MAPPINGS[tiny_models.DIFFUSION_MODELS[family][3]]
    out = getattr(cls(), cls.FUNCTION)(width=64, height=64, batch_size=1)
    latent = out[0] if isinstance(out, tuple) else out.args[0]
    nodes.KSampler().sample(clone, 1, 1, 1.0, "euler", "simple", positive, positive, latent)
    return calls, blocks


def text_positions(family, model, base, changed):
    """The positions of the first main call whose q changes when the conditioning changes from `base` to `changed`
    (of the same length): q is computed per token before any attention mixes them, so those are the positions of
    the changed rows."""
    import torch

    a, _ = one_step(family, model, base)
    b, _ = one_step(family, model, changed)
    main = max(range(len(a)), key=lambda i: (a[i][0].shape[2], -i))  # the first of the longest calls
    qa, qb = a[main][0], b[main][0]
    return [i for i in range(qa.shape[2]) if not torch.equal(qa[:, :, i], qb[:, :, i])]


def cond(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_structure(loaded, family):
    base_class, config_class, blocks, patch, channels, down = STRUCTURE[family]
    _, model = loaded(family)
    dm = model.model.diffusion_model
    assert type(model.model).__name__ == base_class
    assert type(model.model.model_config).__name__ == config_class
    assert {name: len(getattr(dm, name)) for name in blocks} == blocks
    assert dm.patch_size == patch
    assert model.model.latent_format.latent_channels == channels == LATENTS[family][0]
    assert 64 // LATENTS[family][-1] == down
    assert getattr(model.model.latent_format, "spacial_downscale_ratio", None) == pinned(FORMAT_DOWNSCALE, family)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_attention_calls_of_one_step(loaded, family):
    expected = pinned(CALLS, family)
    clip, model = loaded(family)
    calls, _ = one_step(family, model, cond(clip, "a red cat"))
    assert all(skip_reshape and mask is None for _, _, _, skip_reshape, mask, _ in calls)
    assert [(q.shape[2], k_shape[2], heads, q.shape[3], *info) for q, k_shape, heads, _, _, info in calls] == expected


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_token_order_of_the_main_calls(loaded, family):
    import torch

    expected = pinned(TEXT_POSITIONS, family)
    clip, model = loaded(family)
    assert text_positions(family, model, cond(clip, "a red cat"), cond(clip, "a blue dog")) == list(expected["text"])
    if family != "hunyuan_image":
        return
    _, blocks = one_step(family, model, cond(clip, "a red cat"), single_block_input=True)
    img, txt = blocks["double"]
    order = {"txt, img": (txt, img), "img, txt": (img, txt)}[expected["single"]]
    assert torch.equal(blocks["single"], torch.cat(order, dim=1))
    quoted = cond(clip, 'a sign that says "hello"')
    rows, extra = quoted[0]
    g = torch.Generator().manual_seed(7)
    other_qwen = [[torch.randn(rows.shape, generator=g), dict(extra)]]
    other_byt5 = [[rows, {**extra, "conditioning_byt5small": torch.randn(extra["conditioning_byt5small"].shape,
                                                                         generator=g)}]]
    assert text_positions(family, model, quoted, other_qwen) == list(expected["qwen"])
    assert text_positions(family, model, quoted, other_byt5) == list(expected["byt5"])
