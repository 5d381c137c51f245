"""API-format graphs used by the headless and server tests.

`flux_dev` and `sdxl_default` are ComfyUI's official FLUX-dev and SDXL example graphs, exported in API format, with
only sizes and steps made small (the tiny test models carry the official file names). Node ids follow the
official examples. `qwen_image`, `z_image_turbo` and `flux2_dev` follow ComfyUI's own templates for those models
(below).
"""

import copy

PROMPT = "A cow and a horse in a farm"


def flux_dev(prompt=PROMPT, width=64, height=64, steps=2, seed=42):
    return copy.deepcopy({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["11", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                          "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                      "weight_dtype": "default"}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
            "latent_image": ["27", 0]}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": steps, "denoise": 1.0,
                                                          "model": ["30", 0]}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "30": {"class_type": "ModelSamplingFlux", "inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": width,
                                                             "height": height, "model": ["12", 0]}},
    })


def sdxl_default(prompt="beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
                 negative="text, watermark", width=64, height=64, steps=2, seed=156680208700286):
    return copy.deepcopy({
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    })


def with_token_inspector(graph, clip_link, text, node_id="100"):
    graph = copy.deepcopy(graph)
    graph[node_id] = {"class_type": "LeaklessTokenInspector", "inputs": {"clip": clip_link, "text": text}}
    return graph


# ComfyUI's own templates (comfyui-workflow-templates 0.11.44), in API format with the template's node ids, files,
# sampler settings and first prompt; the optional speed-up LoRA and its switches are left out (off by default).
def qwen_image(prompt=PROMPT, negative="", width=1328, height=1328, steps=20, seed=42):
    """image_qwen_image: ModelSamplingAuraFlow 3.1, KSampler euler/simple, CFG 4, an empty negative prompt."""
    return copy.deepcopy({
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["66", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["58", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["38", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["38", 0]},
              "_meta": {"title": "CLIP Text Encode (Negative Prompt)"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["39", 0]}},
        "37": {"class_type": "UNETLoader", "inputs": {"unet_name": "qwen_image_fp8_e4m3fn.safetensors",
                                                      "weight_dtype": "default"}},
        "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                                      "type": "qwen_image", "device": "default"}},
        "39": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "58": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "60": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Qwen-Image", "images": ["8", 0]}},
        "66": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.1, "model": ["37", 0]}},
    })


def z_image_turbo(prompt=PROMPT, width=1024, height=1024, steps=8, seed=42):
    """image_z_image_turbo: ModelSamplingAuraFlow 3, KSampler res_multistep/simple, CFG 1, the negative the
    positive zeroed out (ConditioningZeroOut), FLUX.1's VAE."""
    return copy.deepcopy({
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple",
            "denoise": 1.0, "model": ["11", 0], "positive": ["27", 0], "negative": ["33", 0],
            "latent_image": ["13", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["29", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "z-image-turbo", "images": ["8", 0]}},
        "11": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.0, "model": ["28", 0]}},
        "13": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "27": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["30", 0]}},
        "28": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                      "weight_dtype": "default"}},
        "29": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "30": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2",
                                                      "device": "default"}},
        "33": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["27", 0]}},
    })


def flux2_dev(prompt=PROMPT, width=1024, height=1024, steps=20, seed=42):
    """image_flux2_text_to_image: FluxGuidance 4, BasicGuider, euler, Flux2Scheduler, EmptyFlux2LatentImage."""
    return copy.deepcopy({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["38", 0]},
              "_meta": {"title": "CLIP Text Encode (Positive Prompt)"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2_dev", "images": ["8", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "full_encoder_small_decoder.safetensors"}},
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux2_dev_fp8mixed.safetensors",
                                                      "weight_dtype": "default"}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["48", 0],
            "latent_image": ["47", 0]}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 4.0, "conditioning": ["6", 0]}},
        "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": "mistral_3_small_flux2_bf16.safetensors",
                                                      "type": "flux2", "device": "default"}},
        "47": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height,
                                                                 "batch_size": 1}},
        "48": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": width, "height": height}},
    })
