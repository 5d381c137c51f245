"""The tiny DiTs of the newer families (issue 13 §4) load through UNETLoader under their template file names and
sample one KSampler step at 64×64 with their tiny text encoders, headless, on both ComfyUI versions where the
family exists."""

import pytest

import comfy_env
import tiny_models
from test_tiny_text_encoders import family_or_skip, one_thread  # noqa: F401 - the fixture applies here too

# family: the latent KSampler returns for 64×64 (channels, [frames,] height, width; Qwen-Image uses the Wan 2.1 format)
LATENTS = {"qwen_image": (16, 1, 8, 8), "z_image": (16, 8, 8), "flux2": (128, 4, 4), "flux2_klein": (128, 4, 4),
           "krea2": (16, 1, 8, 8), "sd3": (16, 8, 8), "hidream": (16, 8, 8)}


def sample_graph(family):
    loader, inputs = family_or_skip(family)
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
