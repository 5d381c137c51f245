"""Writes tiny random-weight FLUX / SDXL / SD1.5 models and text encoders as .safetensors, through ComfyUI's classes.

Run inside a process that has imported ComfyUI (see comfy_env.py). Files carry the metadata key
``leakless.tiny`` that the test-only loader shim (custom_nodes/leakless_test_tiny) reads; real tokenizers are
used throughout (ComfyUI ships them), only the weights are tiny and random.
File names are the ones the example workflows use, so those run unchanged on the tiny models.
"""

import json
import os

import torch

TINY_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
               "projection_dim": 32}
TINY_CLIP_G = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 31,
               "projection_dim": 32}
TINY_T5 = {"d_model": 64, "d_ff": 128, "num_heads": 2, "d_kv": 32, "num_layers": 2}
TE_OPTS = {"clip_l_model_config": TINY_CLIP_L, "clip_g_model_config": TINY_CLIP_G, "t5xxl_model_config": TINY_T5}

# The file names of the official example workflows (and of ours), mapped to tiny content.
FILES = {
    "flux_unet": "diffusion_models/flux1-dev.safetensors",
    "sdxl_unet": "diffusion_models/sdxl_unet_tiny.safetensors",
    "clip_l": "text_encoders/clip_l.safetensors",
    "clip_g": "text_encoders/clip_g.safetensors",
    "t5xxl": "text_encoders/t5xxl_fp16.safetensors",
    "flux_vae": "vae/ae.safetensors",
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
    `txt_ids_dims`, and `vec_in_dim` to Chroma), at the values its own model detection gives FLUX.1 and Chroma."""
    import dataclasses

    if image_model == "chroma":
        from comfy.ldm.chroma.model import ChromaParams as params
    else:
        from comfy.ldm.flux.model import FluxParams as params
    defaults = {"txt_ids_dims": [], "vec_in_dim": None}
    required = {f.name for f in dataclasses.fields(params) if f.default is dataclasses.MISSING}
    return {**{k: v for k, v in defaults.items() if k in required and k not in cfg}, **cfg}


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


def build_unet(model_cls, cfg, seed=0, dtype=torch.float32, device=None):
    mc = model_cls(cfg)
    mc.set_inference_dtype(dtype, None)
    m = mc.get_model({}, device=device)
    if not rand_init_(m.diffusion_model, seed=seed) and cfg.get("image_model") in ("flux", "chroma"):
        raise RuntimeError("the tiny FLUX/Chroma has no RMSNorm to set to 1: its attention would be near-uniform "
                           "(did ComfyUI change its norm class?)")
    return m


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
    stamp = os.path.join(models_dir, ".leakless-tiny-v5")
    if os.path.exists(stamp) and all(os.path.exists(p) for p in paths.values()):
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
    open(stamp, "w").close()
    return paths
