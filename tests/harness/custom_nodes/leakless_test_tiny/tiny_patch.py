"""Wraps five ComfyUI loader functions so files marked tiny in their metadata load with their own config."""

import contextvars
import functools
import json

TINY_KEY = "leakless.tiny"
WRAPPER_MARK = "leakless_tiny_wrapper"  # an attribute of this shim's own wrappers, so they are never stacked
_TE_MODEL = contextvars.ContextVar("leakless_tiny_te_model", default=None)  # set while one tiny file loads


def tiny_from_metadata(metadata):
    if metadata and TINY_KEY in metadata:
        return json.loads(metadata[TINY_KEY])
    return None


def tiny_from_file(path):
    try:
        import safetensors

        with safetensors.safe_open(path, framework="pt") as f:
            return tiny_from_metadata(f.metadata())
    except Exception:  # noqa: BLE001 - not a safetensors file: not ours
        return None


def install():
    import comfy.model_detection
    import comfy.sd
    import comfy.supported_models
    import comfy.text_encoders.long_clipl

    if getattr(comfy.sd.load_clip, WRAPPER_MARK, False):  # installed already (the shim imported twice)
        return

    orig_config_from_unet = comfy.model_detection.model_config_from_unet

    @functools.wraps(orig_config_from_unet)
    def model_config_from_unet(state_dict, unet_key_prefix, use_base_if_no_match=False, metadata=None):
        tiny = tiny_from_metadata(metadata)
        if not tiny or "supported_model" not in tiny:
            return orig_config_from_unet(state_dict, unet_key_prefix, use_base_if_no_match, metadata=metadata)
        unet_config = comfy.model_detection.detect_unet_config(state_dict, unet_key_prefix, metadata=metadata)
        overrides = tiny.get("unet", {})
        unet_config.update(overrides)
        mc = getattr(comfy.supported_models, tiny["supported_model"])(unet_config)
        mc.unet_config.update(overrides)  # the class merges its own defaults over the config it was given
        return mc

    comfy.model_detection.model_config_from_unet = model_config_from_unet

    orig_load_clip = comfy.sd.load_clip

    @functools.wraps(orig_load_clip)
    def load_clip(ckpt_paths, embedding_directory=None, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
                  model_options={}, *args, **kwargs):  # noqa: B006 - ComfyUI's signature (0.33.0 adds
        # disable_dynamic); never mutated
        extra, kinds = {}, []
        for path in ckpt_paths:
            tiny = tiny_from_file(path) or {}
            extra.update(tiny.get("te_model_options", {}))
            kinds.append(tiny.get("te_model"))
        token = _TE_MODEL.set(kinds[0] if len(kinds) == 1 else None)  # single-encoder loads detect the kind
        try:
            return orig_load_clip(ckpt_paths, embedding_directory, clip_type, {**model_options, **extra}, *args,
                                  **kwargs)
        finally:
            _TE_MODEL.reset(token)

    setattr(load_clip, WRAPPER_MARK, True)
    comfy.sd.load_clip = load_clip

    orig_detect = comfy.sd.detect_te_model

    @functools.wraps(orig_detect)
    def detect_te_model(sd):
        kind = _TE_MODEL.get()
        return getattr(comfy.sd.TEModel, kind) if kind else orig_detect(sd)

    comfy.sd.detect_te_model = detect_te_model

    orig_guess = comfy.sd.load_state_dict_guess_config

    @functools.wraps(orig_guess)
    def load_state_dict_guess_config(sd, *args, te_model_options={}, metadata=None, **kwargs):  # noqa: B006
        tiny = tiny_from_metadata(metadata)
        if tiny:
            te_model_options = {**te_model_options, **tiny.get("te_model_options", {})}
        return orig_guess(sd, *args, te_model_options=te_model_options, metadata=metadata, **kwargs)

    comfy.sd.load_state_dict_guess_config = load_state_dict_guess_config

    orig_long = comfy.text_encoders.long_clipl.model_options_long_clip

    @functools.wraps(orig_long)
    def model_options_long_clip(sd, tokenizer_data, model_options):
        tokenizer_data, out = orig_long(sd, tokenizer_data, model_options)
        merged = dict(out)
        for key in ("clip_l_model_config", "clip_g_model_config"):
            if key in model_options and out.get(key) is not model_options[key]:
                merged[key] = {**model_options[key], **out.get(key, {})}
        return tokenizer_data, merged

    comfy.text_encoders.long_clipl.model_options_long_clip = model_options_long_clip
