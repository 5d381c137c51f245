"""Writes tiny random-weight FLUX / SDXL / SD1.5 models and text encoders (those and Qwen-Image, Z-Image, FLUX.2,
Krea 2, SD3, HiDream, HunyuanImage 2.1, Lumina 2) as .safetensors, through ComfyUI's classes.

Run inside a process that has imported ComfyUI (see comfy_env.py). Files carry the metadata key
``leakless.tiny`` that the test-only loader shim (custom_nodes/leakless_test_tiny) reads; real tokenizers are
used throughout (ComfyUI ships them), only the weights are tiny and random. One exception: Lumina 2's Gemma-2-2B
reads its SentencePiece model from the text-encoder file, and no installable package we found ships Gemma's
(Google's `gemma` library reads it from a cloud bucket at run time): the tiny file carries a small real
SentencePiece model trained here (gemma_spiece_model: fixed corpus, one thread, byte fallback, Gemma's special ids
and normalizer settings), which ComfyUI's own SPieceTokenizer reads exactly as it reads Gemma's.
File names are the ones the example workflows use, so those run unchanged on the tiny models.
"""

import importlib
import json
import os

import torch

TINY_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
               "projection_dim": 32}
TINY_CLIP_G = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 31,
               "projection_dim": 32}
TINY_T5 = {"d_model": 64, "d_ff": 128, "num_heads": 2, "d_kv": 32, "num_layers": 2}
TE_OPTS = {"clip_l_model_config": TINY_CLIP_L, "clip_g_model_config": TINY_CLIP_G, "t5xxl_model_config": TINY_T5}

# The LLM text encoders: hidden 8, one head (ComfyUI fixes head_dim at 128), as many layers as the encoder reads;
# the full vocabulary, since the real tokenizers' ids index the embedding. Stored in float32: ComfyUI runs these
# encoders in the file's dtype, and float16 matmuls on a CPU are ~10x slower.
TINY_LLM = {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 1, "num_key_value_heads": 1}
# HiDream's text encoder hands a file to its T5 only if it has block 23 (else to the Llama): 24 blocks.
TINY_T5_24 = {"d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16, "num_layers": 24}

# LLM text encoders by template file name: (module in comfy.text_encoders, its SDClipModel class, model name (the
# `<name>_model_config` key), config beyond TINY_LLM, TEModel). Layers: as many as the encoder reads: Qwen-Image the
# last; Z-Image the second to last and FLUX.2 Klein 9/18/27 (one file serves both); FLUX.2 dev 10/20/30; Krea 2
# 2..35; HiDream all 32 of Llama 3.1 8B (whose vocabulary HiDream sets to 128256).
LLM_FILES = {
    "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors": ("qwen_image", "Qwen25_7BVLIModel", "qwen25_7b",
                                                            {"num_hidden_layers": 2}, "QWEN25_7B"),
    "text_encoders/qwen_3_4b.safetensors": ("z_image", "Qwen3_4BModel", "qwen3_4b", {"num_hidden_layers": 28},
                                            "QWEN3_4B"),
    "text_encoders/mistral_3_small_flux2_bf16.safetensors": ("flux", "Mistral3_24BModel", "mistral3_24b",
                                                             {"num_hidden_layers": 31}, "MISTRAL3_24B"),
    "text_encoders/qwen3vl_4b_fp8_scaled.safetensors": ("krea2", "Krea2Qwen3VLClipModel", "qwen3vl_4b",
                                                        {"num_hidden_layers": 36}, "QWEN3VL_4B"),
    "text_encoders/llama_3.1_8b_instruct_fp8_scaled.safetensors": ("hunyuan_video", "LLAMAModel", "llama",
                                                                   {"num_hidden_layers": 32, "vocab_size": 128256},
                                                                   "LLAMA3_8"),
    # HunyuanImage 2.1 reads Qwen2.5-VL's third-to-last layer (ComfyUI asserts |-3| < layers): 4 layers, layer 1.
    "text_encoders/qwen_2.5_vl_7b.safetensors": ("hunyuan_image", "Qwen25_7BVLIModel", "qwen25_7b",
                                                 {"num_hidden_layers": 4}, "QWEN25_7B"),
    # Lumina 2 reads Gemma-2-2B's second-to-last layer: 3 layers; the vocabulary is the trained SentencePiece
    # model's (GEMMA_SPIECE_VOCAB), stored in the file as ComfyUI reads Gemma's (`spiece_model`).
    "text_encoders/gemma_2_2b_fp16.safetensors": ("lumina2", "Gemma2_2BModel", "gemma2_2b",
                                                  {"num_hidden_layers": 3, "vocab_size": 512}, "GEMMA_2_2B"),
}
GEMMA_SPIECE_VOCAB = 512
# HunyuanImage 2.1's ByT5-small glyph encoder: ComfyUI fixes its width at 1472 (the DiT's byt5_in reads 1472) and
# its vocabulary at 1510; one tiny layer. ComfyUI builds it with the loader's model_options as they come (no
# model_name), so the config override's key is "_model_config".
TINY_BYT5 = {"d_ff": 16, "num_heads": 1, "d_kv": 8, "num_layers": 1}
BYT5_FILE = "text_encoders/byt5_small_glyphxl_fp16.safetensors"
BYT5_OPTION = "_model_config"
# The fixed corpus of the tiny Gemma SentencePiece model (prompt-like English: "a red cat" is bos, "a", "▁red",
# "▁cat" as in Gemma's own vocabulary; rare words fall back to pieces and bytes).
GEMMA_CORPUS = (
    "a red cat sitting on a blue chair beside a yellow table",
    "a photo of a dog and a cat in a green garden",
    "cat on a red mat, a dog on a blue rug",
    "a sign that says hello in red letters on a white wall",
    "a portrait of a woman with long black hair, soft light",
    "a small house on a hill under a starry night sky",
    "two birds on a branch, watercolor painting",
    "a bowl of fruit on a wooden table, still life",
    "a city street at night with neon signs and rain",
    "an astronaut riding a horse on the moon",
    "a mountain lake at sunrise, mist over the water",
    "red flowers in a glass vase, a black cat asleep beside it",
)
# Mistral 3's 131k tekken vocabulary, from the mistral-common package setup_env.sh unpacks into the cache
# (requirements-data.txt); its first 130072 entries equal those of tekken_240911.json in the same package.
TEKKEN = "mistral-common/mistral_common/data/tekken_240718.json"
# The special tokens a Mistral 3 tekken file lists first (mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS, the
# ranks Mistral Small 3 uses); ranks up to default_num_special_tokens are filled with <SPECIAL_n>.
TEKKEN_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                  "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                  "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]

# Each family's text encoder as its ComfyUI template loads it: (loader node, inputs), and what ComfyUI must have
# (module in comfy.text_encoders, attribute). SD3: ComfyUI pads the CLIP rows to 4096 and appends the T5 rows, so a
# TripleCLIPLoader needs a 4096-wide T5 (263 MB of embedding at least): CLIP-L+G and T5 are loaded apart.
TEXT_ENCODERS = {
    "qwen_image": ("CLIPLoader", {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "type": "qwen_image"}),
    "z_image": ("CLIPLoader", {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}),
    "flux2": ("CLIPLoader", {"clip_name": "mistral_3_small_flux2_bf16.safetensors", "type": "flux2"}),
    "flux2_klein": ("CLIPLoader", {"clip_name": "qwen_3_4b.safetensors", "type": "flux2"}),
    "krea2": ("CLIPLoader", {"clip_name": "qwen3vl_4b_fp8_scaled.safetensors", "type": "krea2"}),
    "sd3": ("DualCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "type": "sd3"}),
    "sd3_t5": ("CLIPLoader", {"clip_name": "t5xxl_fp16.safetensors", "type": "sd3"}),
    "hidream": ("QuadrupleCLIPLoader", {"clip_name1": "clip_l_hidream.safetensors",
                                        "clip_name2": "clip_g_hidream.safetensors",
                                        "clip_name3": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                                        "clip_name4": "llama_3.1_8b_instruct_fp8_scaled.safetensors"}),
    # ComfyUI's HunyuanImage 2.1 example (ComfyUI_examples/hunyuan_image): Qwen2.5-VL-7B and the ByT5 glyph encoder.
    "hunyuan_image": ("DualCLIPLoader", {"clip_name1": "qwen_2.5_vl_7b.safetensors",
                                         "clip_name2": "byt5_small_glyphxl_fp16.safetensors", "type": "hunyuan_image"}),
    # Lumina 2's split files (Comfy-Org's repackage; ComfyUI's example loads the same three as one checkpoint).
    "lumina2": ("CLIPLoader", {"clip_name": "gemma_2_2b_fp16.safetensors", "type": "lumina2"}),
}
FAMILY_NEEDS = {"qwen_image": ("qwen_image", "te"), "z_image": ("z_image", "te"), "flux2": ("flux", "flux2_te"),
                "flux2_klein": ("flux", "klein_te"), "krea2": ("krea2", "te"), "sd3": ("sd3_clip", "sd3_clip"),
                "sd3_t5": ("sd3_clip", "sd3_clip"), "hidream": ("hidream", "hidream_clip"),
                "hunyuan_image": ("hunyuan_image", "te"), "lumina2": ("lumina2", "Gemma2_2BModel")}
# The families added to Leakless through the registry alone (nodes/registry/); their facts are in
# tests/data/new_families.md.
NEW_FAMILIES = ("hunyuan_image", "lumina2")
# HiDream's template names for the CLIPs: links to the tiny clip_l / clip_g.
LINKS = {"text_encoders/clip_l_hidream.safetensors": "clip_l.safetensors",
         "text_encoders/clip_g_hidream.safetensors": "clip_g.safetensors"}
T5_24_FILE = "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors"
FLUX2_VAE = "vae/full_encoder_small_decoder.safetensors"  # the FLUX.2 dev template's VAE

# The file names of the official example workflows (and of ours), mapped to tiny content.
FILES = {
    "flux_unet": "diffusion_models/flux1-dev.safetensors",
    "sdxl_unet": "diffusion_models/sdxl_unet_tiny.safetensors",
    "clip_l": "text_encoders/clip_l.safetensors",
    "clip_g": "text_encoders/clip_g.safetensors",
    "t5xxl": "text_encoders/t5xxl_fp16.safetensors",
    "flux_vae": "vae/ae.safetensors",  # also Z-Image's (its template loads FLUX.1's VAE)
    "qwen_image_vae": "vae/qwen_image_vae.safetensors",
    "sdxl_vae": "vae/sdxl_vae.safetensors",
    "sdxl_ckpt": "checkpoints/sd_xl_base_1.0.safetensors",
    "sd15_ckpt": "checkpoints/v1-5-pruned-emaonly.safetensors",
}


def rand_init_(module, std=0.02, seed=0):
    """Random weights; RMSNorm scales start at 1 as in real models (so attention is not uniform). Drawn on each
    parameter's own device (one generator per device), so a model built on a GPU is never copied through host
    memory. Returns how many RMSNorm scales were set (the norms are found by type: ComfyUI renamed FLUX's
    `scale` to `weight` after 0.3.75, and a name match would silently stop applying)."""
    generators = {}
    norm_scales = {id(p) for m in module.modules() if "RMSNorm" in type(m).__name__
                   for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for p in module.parameters():
            if p.dtype.is_floating_point:
                if p.device not in generators:
                    generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
                p.copy_(torch.randn(p.shape, generator=generators[p.device], device=p.device) * std)
                if id(p) in norm_scales:
                    p.add_(1.0)
    return len(norm_scales)


def fit_params(cfg: dict, image_model: str) -> dict:
    """`cfg` with the fields this ComfyUI's FLUX/Chroma parameter class requires and the config lacks (0.33.0 added
    `txt_ids_dims`, and `vec_in_dim` to Chroma), at the values its own model detection gives FLUX.1 and Chroma, and
    without the fields it lacks (FLUX.2's `txt_ids_dims` on 0.3.75)."""
    import dataclasses

    if image_model == "chroma":
        from comfy.ldm.chroma.model import ChromaParams as params
    else:
        from comfy.ldm.flux.model import FluxParams as params
    defaults = {"txt_ids_dims": [], "vec_in_dim": None}
    fields = {f.name: f for f in dataclasses.fields(params)}
    required = {k for k, f in fields.items() if f.default is dataclasses.MISSING}
    return {**{k: v for k, v in defaults.items() if k in required and k not in cfg},
            **{k: v for k, v in cfg.items() if k in fields or k == "image_model"}}


def flux_cfg(hidden=128, heads=1, depth=1, single=1, ctx=64, vec=32, guidance=True):
    return fit_params(dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=vec, context_in_dim=ctx,
                           hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth, depth_single_blocks=single,
                           axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=guidance),
                      "flux")


def chroma_cfg(hidden=128, heads=1, depth=2, single=2, ctx=64):
    """Chroma: FLUX's blocks with an approximator instead of the vector input (built in memory: ComfyUI's detection
    fixes the approximator at full size)."""
    return fit_params(dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=ctx,
                           hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth, depth_single_blocks=single,
                           axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, in_dim=64,
                           out_dim=hidden, hidden_dim=64, n_layers=1), "chroma")


def sdxl_cfg(mc=32, mult=(1, 2), nres=(1, 1), td=(0, 1), tdo=(0, 0, 4, 4), mid=1, ctx=64, pooled=32, head_ch=32):
    return dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
                num_classes="sequential", adm_in_channels=pooled + 1536, in_channels=4, out_channels=4,
                model_channels=mc, num_res_blocks=list(nres), transformer_depth=list(td),
                transformer_depth_output=list(tdo), channel_mult=list(mult), transformer_depth_middle=mid,
                use_linear_in_transformer=True, context_dim=ctx, use_temporal_resblock=False,
                use_temporal_attention=False, num_head_channels=head_ch)


def sd15_cfg(mc=32, ctx=32, head_ch=32):
    return dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
                in_channels=4, out_channels=4, model_channels=mc, num_res_blocks=[1, 1],
                transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], channel_mult=[1, 2],
                transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=ctx,
                use_temporal_resblock=False, use_temporal_attention=False, num_head_channels=head_ch,
                adm_in_channels=None)


def flux2_cfg(hidden=128, ctx=24):
    """FLUX.2 (dev and Klein share the DiT; ComfyUI's detection values, tiny): the context is the text encoder's
    three stacked layers, 3 × 8 wide for both tiny encoders."""
    return fit_params(dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=ctx,
                           hidden_size=hidden, mlp_ratio=3.0, num_heads=1, depth=1, depth_single_blocks=1,
                           axes_dim=[32, 32, 32, 32], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
                           txt_ids_dims=[3], global_modulation=True, mlp_silu_act=True, ops_bias=False,
                           default_ref_method="index", ref_index_scale=10.0), "flux")


# Tiny DiTs by family: (supported_models class, config (also the shim's override of what detection reads from
# full-size shapes), template file name, the template's empty-latent node). Head dims stay what the RoPE axes sum to.
DIFFUSION_MODELS = {
    "qwen_image": ("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                     num_layers=1, attention_head_dim=128, num_attention_heads=1,
                                     joint_attention_dim=8, axes_dims_rope=[16, 56, 56]),
                   "qwen_image_fp8_e4m3fn.safetensors", "EmptySD3LatentImage"),
    # Z-Image's timestep embedding is 256 wide and its modulation reads min(dim, 256): dim 256.
    "z_image": ("ZImage", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=2,
                               n_refiner_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=1.0,
                               norm_eps=1e-5, qk_norm=True, cap_feat_dim=8, axes_dims=[32, 48, 48],
                               axes_lens=[1536, 512, 512], rope_theta=256.0, z_image_modulation=True,
                               time_scale=1000.0, pad_tokens_multiple=32),
                "z_image_turbo_bf16.safetensors", "EmptySD3LatentImage"),
    # Krea 2: head dim 64 (RoPE axes 16/24/24 from it), its text fusion reads the 12 tapped layers, 8 wide.
    "krea2": ("Krea2", dict(image_model="krea2", features=64, tdim=256, txtdim=8, heads=1, kvheads=1, multiplier=2,
                            layers=2, patch=2, channels=16, txtlayers=12, txtheads=1, txtkvheads=1),
              "krea2_turbo_fp8_scaled.safetensors", "EmptyLatentImage"),
    "flux2": ("Flux2", None, "flux2_dev_fp8mixed.safetensors", "EmptyFlux2LatentImage"),
    # SD3.5 MMDiT (hidden 64 × depth, RMS q/k norm, block 0 with SD3.5 Medium's extra image-only attention); its
    # context is the 4096-wide CLIP-L+G rows (ComfyUI's SD3.5 templates load a checkpoint; this is the DiT alone).
    "sd3": ("SD3", dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=64,
                        context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": 4096, "out_features": 128}},
                        num_patches=64, pos_embed_max_size=8, qk_norm="rms", pos_embed_scaling_factor=None,
                        x_block_self_attn_layers=[0]),
            "sd3.5_large.safetensors", "EmptySD3LatentImage"),
    # HiDream: one double and one single block (they read Llama layers 0 and 31), MoE as in the real model;
    # caption_channels = [T5 width, Llama width].
    "hidream": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                num_single_layers=1, attention_head_dim=128, num_attention_heads=1,
                                caption_channels=[32, 8], text_emb_dim=64, num_routed_experts=4,
                                num_activated_experts=2, axes_dims_rope=[64, 32, 32], max_resolution=[128, 128],
                                llama_layers=[0, 31]),
                "hidream_i1_dev_fp8.safetensors", "EmptySD3LatentImage"),
    "flux2_klein": ("Flux2", None, "flux-2-klein-4b.safetensors", "EmptyFlux2LatentImage"),
    # HunyuanImage 2.1: ComfyUI's HunyuanVideo DiT with 2-D patches [1, 1] on the 64-channel, 32x-downscaled latent,
    # head dim 128 (RoPE axes 64/64; ComfyUI's detection reads heads as hidden // 128), ByT5 glyph rows on (its
    # byt5_in mapper is fixed at 1472 -> 2048 -> 2048 -> hidden), no guidance embedding or MeanFlow (the base model,
    # not the distilled one); the text refiner has ComfyUI's fixed 2 blocks. Fields this ComfyUI lacks are dropped.
    "hunyuan_image": ("HunyuanImage21", dict(image_model="hunyuan_video", in_channels=64, out_channels=64,
                                             vec_in_dim=None, context_in_dim=8, hidden_size=128, mlp_ratio=4.0,
                                             num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[64, 64],
                                             theta=256, patch_size=[1, 1], qkv_bias=True, guidance_embed=False,
                                             byt5=True, meanflow=False, use_cond_type_embedding=False,
                                             vision_in_dim=None, meanflow_sum=False),
                      "hunyuanimage2.1_bf16.safetensors", "EmptyHunyuanImageLatent"),
    # Lumina 2: NextDiT as ComfyUI detects the original (head dim 96 = RoPE axes 32/32/32, grouped-query attention,
    # theta 10000) without Z-Image's caption/image padding and modulation; 2 heads over 1 KV head, 2 layers, one
    # refiner of each kind; the caption is the tiny Gemma's 8-wide rows.
    "lumina2": ("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=192, n_layers=2,
                                n_refiner_layers=1, n_heads=2, n_kv_heads=1, multiple_of=16, ffn_dim_multiplier=1.0,
                                norm_eps=1e-5, qk_norm=True, cap_feat_dim=8, axes_dims=[32, 32, 32],
                                axes_lens=[300, 512, 512], rope_theta=10000.0),
                "lumina_2_model_bf16.safetensors", "EmptySD3LatentImage"),
}


def unet_cfg(model, cfg):
    """A DIFFUSION_MODELS config as this ComfyUI's model class takes it (FLUX.2's from flux2_cfg; HunyuanImage's
    without the parameters this ComfyUI's HunyuanVideoParams lacks: 0.3.75 has no meanflow_sum)."""
    if cfg is None:
        return flux2_cfg()
    if model == "HunyuanImage21":
        import dataclasses

        from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

        fields = {f.name for f in dataclasses.fields(HunyuanVideoParams)} | {"image_model"}
        return {k: v for k, v in cfg.items() if k in fields}
    return cfg


def write_diffusion_models(models_dir):
    """The tiny DiTs this ComfyUI has a model class for, stored in bfloat16 (ComfyUI picks the compute dtype)."""
    import comfy.supported_models

    for model, cfg, name, _ in DIFFUSION_MODELS.values():
        if hasattr(comfy.supported_models, model):
            cfg = unet_cfg(model, cfg)
            sd = build_unet(getattr(comfy.supported_models, model), cfg).diffusion_model.state_dict()
            save({k: v.to(torch.bfloat16) for k, v in sd.items()}, os.path.join(models_dir, "diffusion_models", name),
                 tiny_meta(model, cfg))


def build_unet(model_cls, cfg, seed=0, dtype=torch.float32, device=None):
    mc = model_cls(cfg)
    mc.set_inference_dtype(dtype, None)
    m = mc.get_model({}, device=device)
    if not rand_init_(m.diffusion_model, seed=seed) and cfg.get("image_model") in ("flux", "chroma"):
        raise RuntimeError("the tiny FLUX/Chroma has no RMSNorm to set to 1: its attention would be near-uniform "
                           "(did ComfyUI change its norm class?)")
    set_pos_embed_(m.diffusion_model)
    return m


def set_pos_embed_(dit):
    """SD3's MMDiT keeps its position embedding in a buffer that ComfyUI leaves uninitialised (checkpoints carry it):
    the sine-cosine table real checkpoints hold, so the tiny file is the same every time it is written."""
    buffer = getattr(dit, "pos_embed", None)
    if not torch.is_tensor(buffer) or getattr(dit, "pos_embed_max_size", None) is None:
        return
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    table = get_2d_sincos_pos_embed(buffer.shape[-1], dit.pos_embed_max_size)
    with torch.no_grad():
        buffer.copy_(torch.from_numpy(table).reshape(buffer.shape))


def build_clip(tokenizer_cls, clip_model_cls, seed=1):
    import comfy.sd
    import comfy.supported_models_base

    c = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer_cls, clip_model_cls), model_options=TE_OPTS)
    rand_init_(c.cond_stage_model, seed=seed)
    return c


def build_taesd(latent_channels, seed=2):
    import comfy.taesd.taesd

    t = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    rand_init_(t, std=0.05, seed=seed)
    with torch.no_grad():
        t.vae_scale.fill_(1.0)
        t.vae_shift.fill_(0.0)
    return {k: v.contiguous() for k, v in t.state_dict().items()}


def build_wan21_vae(dim=8, seed=2):
    """Qwen-Image's VAE (Wan 2.1's architecture; ComfyUI reads `dim` from the weights), 16 latent channels."""
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    rand_init_(vae, std=0.05, seed=seed)
    return vae.state_dict()


def build_flux2_vae(decoder_ch=32, seed=2):
    """FLUX.2's VAE as its template names it (full_encoder_small_decoder): 32 channels, 2×2-patched and
    batch-normed to the 128-channel latent. ComfyUI fixes the encoder at full size (34M weights) and reads the
    decoder's width from the weights: the file keeps the decoder only (text to image never encodes)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
                "batch_norm_latent": True}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=32, decoder_ddconfig={**ddconfig, "ch": decoder_ch})
    rand_init_(vae.decoder, std=0.05, seed=seed)
    rand_init_(vae.post_quant_conv, std=0.05, seed=seed)
    return {k: v.to(torch.bfloat16) for k, v in vae.state_dict().items()
            if not k.startswith(("encoder.", "quant_conv."))}


def small_decoder_vae_supported():
    """Whether this ComfyUI builds a KL VAE's decoder at the width its weights have (0.3.75 builds it full size,
    200 MB: FLUX.2 dev, which cannot load its text encoder there anyway, gets no VAE on it)."""
    import inspect

    import comfy.ldm.models.autoencoder

    return "decoder_ddconfig" in inspect.getsource(comfy.ldm.models.autoencoder.AutoencodingEngineLegacy)


def te_module(name):
    """comfy.text_encoders.<name>, or None where this ComfyUI lacks it."""
    try:
        return importlib.import_module(f"comfy.text_encoders.{name}")
    except ImportError:
        return None


def tekken_path():
    from comfy_env import CACHE

    return CACHE / TEKKEN


def tekken_json():
    """The tekken vocabulary mistral-common ships, as ComfyUI reads a FLUX.2 file's `tekken_model`: the entries
    below default_vocab_size − default_num_special_tokens (ComfyUI drops the rest) and Mistral 3's special tokens
    (the file in the package predates them)."""
    with open(tekken_path(), encoding="utf-8") as f:
        data = json.load(f)
    cfg = data["config"]
    specials = cfg["default_num_special_tokens"]
    data["vocab"] = [v for v in data["vocab"] if v["rank"] < cfg["default_vocab_size"] - specials]
    names = TEKKEN_SPECIAL + [f"<SPECIAL_{i}>" for i in range(len(TEKKEN_SPECIAL), specials)]
    data["special_tokens"] = [{"rank": i, "token_str": name, "is_control": True} for i, name in enumerate(names)]
    return json.dumps(data, separators=(",", ":")).encode()


def text_encoders():
    """TEXT_ENCODERS less the families this ComfyUI lacks (by attribute) or whose files could not be written."""
    have = {f for f, (module, attr) in FAMILY_NEEDS.items() if hasattr(te_module(module), attr)}
    if not tekken_path().exists():
        have.discard("flux2")
    return {f: v for f, v in TEXT_ENCODERS.items() if f in have}


def build_llm(module, cls, name, config, seed=3):
    """One LLM encoder (an SDClipModel) with a tiny config; the language model drawn at random. Vision towers
    (Qwen-VL) keep their fixed full size, stay unallocated and are not saved: a text prompt never runs them."""
    encoder = getattr(te_module(module), cls)(device="cpu", dtype=torch.float32, model_options={
        "model_name": name, f"{name}_model_config": config})
    rand_init_(encoder.transformer.model, seed=seed)
    with torch.no_grad():  # Gemma's norms scale by 1 + weight (rms_norm_add): their scale at 1 is a weight of 0
        for m in encoder.transformer.model.modules():
            if "RMSNorm" in type(m).__name__ and getattr(m, "add", False):
                m.weight.sub_(1.0)
    return {f"model.{k}": v for k, v in encoder.transformer.model.state_dict().items()}


def gemma_spiece_model():
    """A small real SentencePiece model in Gemma's layout, trained on GEMMA_CORPUS (deterministic: fixed corpus and
    order, one thread): BPE with byte fallback and split digits, Gemma's normalizer settings (identity, no dummy
    prefix, whitespace kept), its special ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3, <start_of_turn> 106,
    <end_of_turn> 107; placeholders between). Returns the serialized model proto."""
    import io

    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(GEMMA_CORPUS * 20), model_writer=out, model_type="bpe", vocab_size=GEMMA_SPIECE_VOCAB,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=[f"<unused{i}>" for i in range(102)] + ["<start_of_turn>",
                                                                                         "<end_of_turn>"],
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, num_threads=1,
        shuffle_input_sentence=False, minloglevel=2)
    return out.getvalue()


def text_encoder_files():
    """The text-encoder files write_text_encoders writes on this ComfyUI, relative to models/."""
    llms = [rel for rel, (module, cls, name, *_) in LLM_FILES.items() if hasattr(te_module(module), cls)
            and (name != "mistral3_24b" or tekken_path().exists())]
    return [*llms, T5_24_FILE, *LINKS, *([BYT5_FILE] if hasattr(te_module("hunyuan_image"), "ByT5SmallModel") else [])]


def write_text_encoders(models_dir):
    """The text encoders of the newer families this ComfyUI has (HiDream's CLIPs are links to the tiny CLIP-L/G)."""
    import comfy.text_encoders.sd3_clip

    for rel in text_encoder_files():
        path = os.path.join(models_dir, rel)
        if rel in LINKS:
            if not os.path.lexists(path):
                os.symlink(LINKS[rel], path)
        elif rel == T5_24_FILE:
            t5 = comfy.text_encoders.sd3_clip.T5XXLModel(device="cpu", dtype=torch.float16,
                                                         model_options={"t5xxl_model_config": TINY_T5_24})
            rand_init_(t5.transformer, seed=4)
            save(t5.transformer.state_dict(), path, tiny_meta(te={"t5xxl_model_config": TINY_T5_24}, te_model="T5_XXL"))
        elif rel == BYT5_FILE:
            byt5 = te_module("hunyuan_image").ByT5SmallModel(device="cpu", dtype=torch.float32,
                                                              model_options={BYT5_OPTION: TINY_BYT5})
            rand_init_(byt5.transformer, seed=5)
            save({k: v.to(torch.float16) for k, v in byt5.transformer.state_dict().items()}, path,
                 tiny_meta(te={BYT5_OPTION: TINY_BYT5}))
        else:
            module, cls, name, config, te_model = LLM_FILES[rel]
            config = {**TINY_LLM, **config}
            sd = build_llm(module, cls, name, config)
            if name == "mistral3_24b":  # FLUX.2 dev reads its tokenizer from the file
                sd["tekken_model"] = torch.frombuffer(bytearray(tekken_json()), dtype=torch.uint8)
            if name == "gemma2_2b":  # so does Lumina 2 (tokenizer_data["spiece_model"])
                sd["spiece_model"] = torch.frombuffer(bytearray(gemma_spiece_model()), dtype=torch.uint8)
            save(sd, path, tiny_meta(te={f"{name}_model_config": config}, te_model=te_model))


def tiny_meta(supported_model=None, unet=None, te=None, te_model=None):
    d = {}
    if te_model:  # the text encoder's kind, which ComfyUI detects from full-size weight shapes
        d["te_model"] = te_model
    if supported_model:
        d["supported_model"] = supported_model
    if unet:
        d["unet"] = unet
    if te:
        d["te_model_options"] = te
    return {"leakless.tiny": json.dumps(d)}


def save(sd, path, metadata=None):
    import comfy.utils

    comfy.utils.save_torch_file({k: v.contiguous() for k, v in sd.items()}, path, metadata=metadata)


def patcher(model):
    """A ModelPatcher around a model built in memory, as the loaders make one."""
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def write_all(models_dir):
    """Write every tiny file under `models_dir` (a ComfyUI models/ folder). Idempotent."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.text_encoders.flux

    paths = {k: os.path.join(models_dir, v) for k, v in FILES.items()}
    stamp = os.path.join(models_dir, ".leakless-tiny-v8")
    te_paths = [os.path.join(models_dir, rel) for rel in text_encoder_files()]
    te_paths += [os.path.join(models_dir, "diffusion_models", name) for model, _, name, _ in DIFFUSION_MODELS.values()
                 if hasattr(comfy.supported_models, model)]
    if small_decoder_vae_supported():
        te_paths.append(os.path.join(models_dir, FLUX2_VAE))
    if os.path.exists(stamp) and all(os.path.exists(p) for p in [*paths.values(), *te_paths]):
        return paths
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)

    save(build_unet(comfy.supported_models.Flux, flux_cfg()).diffusion_model.state_dict(), paths["flux_unet"],
         tiny_meta("Flux", {"num_heads": 1}))
    save(build_unet(comfy.supported_models.SDXL, sdxl_cfg()).diffusion_model.state_dict(), paths["sdxl_unet"],
         tiny_meta("SDXL", {"num_head_channels": 32}))
    flux_clip = build_clip(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    save(flux_clip.cond_stage_model.clip_l.transformer.state_dict(), paths["clip_l"],
         tiny_meta(te={"clip_l_model_config": TINY_CLIP_L}))
    save(flux_clip.cond_stage_model.t5xxl.transformer.state_dict(), paths["t5xxl"],
         tiny_meta(te={"t5xxl_model_config": TINY_T5}, te_model="T5_XXL"))
    xl_clip = build_clip(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    save(xl_clip.cond_stage_model.clip_g.transformer.state_dict(), paths["clip_g"],
         tiny_meta(te={"clip_g_model_config": TINY_CLIP_G}))
    save(build_taesd(16), paths["flux_vae"])
    save(build_taesd(4), paths["sdxl_vae"])
    save(build_wan21_vae(), paths["qwen_image_vae"])
    if small_decoder_vae_supported():
        save(build_flux2_vae(), os.path.join(models_dir, FLUX2_VAE))
    comfy.sd.save_checkpoint(paths["sdxl_ckpt"], patcher(build_unet(comfy.supported_models.SDXL, sdxl_cfg())),
                             xl_clip, comfy.sd.VAE(sd=build_taesd(4)),
                             metadata=tiny_meta("SDXL", {"num_head_channels": 32},
                                                {"clip_l_model_config": TINY_CLIP_L,
                                                 "clip_g_model_config": TINY_CLIP_G}))
    sd15_clip = build_clip(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    comfy.sd.save_checkpoint(paths["sd15_ckpt"],
                             patcher(build_unet(comfy.supported_models.SD15, sd15_cfg())), sd15_clip,
                             comfy.sd.VAE(sd=build_taesd(4)),
                             metadata=tiny_meta("SD15", {"num_head_channels": 32},
                                                {"clip_l_model_config": TINY_CLIP_L}))
    write_text_encoders(models_dir)
    write_diffusion_models(models_dir)
    open(stamp, "w").close()
    return paths
