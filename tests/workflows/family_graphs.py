"""One API graph per model family and Leakless method, on the family's tiny model loaded by its standard loaders:
KSampler at cfg 2 with a negative of another length, a batch of two non-square latents, three steps. Used by the
output fingerprints (tests/harness/fingerprints.py): every graph ends in the test shim's latent digest."""

TEXT = "a red cat beside a blue dog"
MARKED = "a **red cat** beside a **blue dog**"
NEGATIVE = "blurry, low quality, watermark"

# family: (CLIP loader, its inputs, the MODEL's loader node id: "1" when the checkpoint loader gives both, the empty
# latent node). The DiTs load through UNETLoader under their template file names (tests/harness/tiny_models.py).
_FLUX_CLIP = ("DualCLIPLoader", {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors",
                                 "type": "flux"})
CHECKPOINTS = {"sdxl": "sd_xl_base_1.0.safetensors", "sd15": "v1-5-pruned-emaonly.safetensors"}
UNETS = {"flux": ("flux1-dev.safetensors", "EmptySD3LatentImage")}
CAUSAL = {"sdxl", "sd15", "qwen_image", "z_image", "flux2", "flux2_klein", "krea2", "hunyuan_image", "lumina2"}


def _loaders(family):
    """(nodes for CLIP (id "1", output 0) and MODEL (id "2" or "1"), the MODEL link, the empty-latent class)."""
    import tiny_models

    if family in CHECKPOINTS:
        ckpt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINTS[family]}}}
        return ckpt, ["1", 0], ["1", 1], "EmptyLatentImage"
    if family == "flux":
        loader, inputs = _FLUX_CLIP
        unet, latent = UNETS["flux"]
    else:
        loader, inputs = tiny_models.text_encoders()[family]
        _, _, unet, latent = tiny_models.DIFFUSION_MODELS[family]
    nodes = {"1": {"class_type": loader, "inputs": dict(inputs)},
             "2": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}}}
    return nodes, ["2", 0], ["1", 0], latent


def graph(family, method):
    """The graph of `method` (deleaker, heatmap, token_trace, redundant, leak_patch, tome) on `family`'s tiny model."""
    nodes, model, clip, latent = _loaders(family)
    batch = 2
    g = dict(nodes)
    g["4"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": NEGATIVE}}
    if method == "deleaker":
        g["3"] = {"class_type": "LeaklessDeLeakerEncode", "inputs": {"clip": clip, "text": MARKED, "entities": ""}}
        g["8"] = {"class_type": "LeaklessDeLeaker", "inputs": {
            "model": model, "entities": ["3", 1], "mask_threshold": -1.0, "image_threshold": 1.0, "alpha": 1.2,
            "mask_history": 0.6, "cross_text": True, "self_text": True, "image_image": True, "alpha_per_pair": False,
            "overlap": "reference"}}
        model = ["8", 0]
    elif method == "heatmap":
        g["3"] = {"class_type": "LeaklessHeatmapEncode", "inputs": {"clip": clip, "text": MARKED, "words": ""}}
        g["8"] = {"class_type": "LeaklessAttentionHeatmap", "inputs": {
            "model": model, "entities": ["3", 1], "start_percent": 0.0, "end_percent": 1.0, "first_block": 0.0,
            "last_block": 1.0}}
        model = ["8", 0]
    elif method == "token_trace":
        g["3"] = {"class_type": "LeaklessTokenTrace", "inputs": {
            "clip": clip, "text": TEXT, "mode": "selection", "selection": "red cat\nblue dog\ncat, dog",
            "include_full_prompt": True, "pooled_output": "reference"}}
        batch = ["3", 2]
    elif method == "redundant":
        mode, items = ("causal rule", "") if family in CAUSAL else ("manual", "red cat: cat\nblue dog: dog")
        g["3"] = {"class_type": "LeaklessRedundantTokenMask", "inputs": {
            "clip": clip, "text": TEXT, "mode": mode, "items": items, "classifier": "none", "threshold": 0.5,
            "pooled_output": "reference"}}
    elif method == "leak_patch":
        g["3"] = {"class_type": "LeaklessLeakPatch", "inputs": {"clip": clip, "text": TEXT, "items": "cat"}}
    elif method == "tome":
        g["3"] = {"class_type": "LeaklessToMeEncode", "inputs": {
            "clip": clip, "text": "a cat wearing sunglasses and a dog wearing a hat",
            "groups": "cat: wearing sunglasses; dog: wearing a hat", "noun_weight": 1.1, "attribute_weight": 1.2,
            "end_token_substitution": 0.0, "clean_prompt": ""}}
        if family == "sdxl":
            g["8"] = {"class_type": "LeaklessToMeSemanticBinding", "inputs": {
                "model": model, "binding": ["3", 1], "steps_fraction": 0.5, "entropy_iterations": 2,
                "semantic_iterations": 1, "semantic_lr": 10000.0, "entropy_step": 3.0, "pose_prior": False,
                "semantic_latent": "main latent"}}
            model = ["8", 0]
    else:
        raise ValueError(method)
    g["5"] = {"class_type": latent, "inputs": {"width": 96, "height": 64, "batch_size": batch}}
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 7, "steps": 3,
        "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    g["7"] = {"class_type": "TinyTestLatentDigest", "inputs": {"samples": ["6", 0]}}
    return g


METHODS = ("deleaker", "heatmap", "token_trace", "redundant", "leak_patch", "tome")
JOINT = ("flux", "sd3", "qwen_image", "z_image", "flux2", "flux2_klein", "krea2", "hidream", "hunyuan_image", "lumina2")
FAMILIES = ("sdxl", "sd15", *JOINT)


def applies(family, method) -> bool:
    """Whether Leakless runs `method` on `family` (DeLeaker: joint attention; ToMe: SDXL and SD1.5's merge)."""
    if method == "deleaker":
        return family in JOINT
    if method == "tome":
        return family in ("sdxl", "sd15")
    return True
