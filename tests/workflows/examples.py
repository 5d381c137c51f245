"""The example workflows shipped in examples_workflows/, defined once as API graphs.

`tests/harness/export_workflows.py` loads each graph into the real frontend and saves the UI-format file the
frontend produces; the browser test loads those files back, converts them to API prompts and runs them.
Shipped settings are the official ones (1024 px, 20 steps); tests shrink sizes and steps only.
"""

from functools import partial

from . import graphs

PROMPT_NODE = "50"


def _shared_prompt(graph, text_nodes, text, title="Prompt"):
    """One multiline prompt node feeding every `text` input, so the user types the prompt once."""
    graph[PROMPT_NODE] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": text},
                          "_meta": {"title": title}}
    for node_id in text_nodes:
        graph[node_id]["inputs"]["text"] = [PROMPT_NODE, 0]
    return graph


def token_inspector_flux():
    g = graphs.with_token_inspector(graphs.flux_dev(width=1024, height=1024, steps=20), ["11", 0], "")
    return _shared_prompt(g, ["6", "100"], graphs.PROMPT)


def token_inspector_sdxl():
    g = graphs.with_token_inspector(graphs.sdxl_default(width=1024, height=1024, steps=20), ["4", 1], "")
    return _shared_prompt(g, ["6", "100"], "a photo of a cat wearing sunglasses and a dog wearing a (red hat:1.2)",
                          title="Positive prompt")


def _flux_prompt_graph(text, width=1024, height=1024):
    g = graphs.flux_dev(width=width, height=height, steps=20)
    return _shared_prompt(g, ["6"], text)


def flux_leak_patch():
    """'bat' next to 'baseball': the animal is patched in from its isolated encoding."""
    text = "a bat flying over a baseball stadium at night"
    g = _flux_prompt_graph(text)
    g["60"] = {"class_type": "LeaklessLeakPatch", "inputs": {"clip": ["11", 0], "text": [PROMPT_NODE, 0],
                                                             "items": "bat"}, "_meta": {"title": "Leak Patch"}}
    g["26"]["inputs"]["conditioning"] = ["60", 0]
    del g["6"]
    return g


def flux_token_trace_grid():
    """One image per word of the prompt, laid out as a labelled grid (512 px: one image per subset)."""
    g = _flux_prompt_graph(graphs.PROMPT, 512, 512)
    g["60"] = {"class_type": "LeaklessTokenTrace", "inputs": {
        "clip": ["11", 0], "text": [PROMPT_NODE, 0], "mode": "each word", "selection": "",
        "include_full_prompt": True, "pooled_output": "reference"}, "_meta": {"title": "Token Trace"}}
    g["26"]["inputs"]["conditioning"] = ["60", 0]
    g["27"]["inputs"]["batch_size"] = ["60", 2]
    g["61"] = {"class_type": "LeaklessTraceGrid", "inputs": {"images": ["8", 0], "labels": ["60", 1],
                                                             "columns": 0, "font_size": 20}}
    g["9"]["inputs"]["images"] = ["61", 0]
    del g["6"]
    return g


def sdxl_token_trace_grid():
    text = "a red cube on top of a blue sphere"
    g = graphs.sdxl_default(prompt=text, width=1024, height=1024, steps=20)
    g["60"] = {"class_type": "LeaklessTokenTrace", "inputs": {
        "clip": ["4", 1], "text": [PROMPT_NODE, 0], "mode": "selection",
        "selection": "red cube\nblue sphere\ncube, sphere", "include_full_prompt": True,
        "pooled_output": "reference"}, "_meta": {"title": "Token Trace"}}
    _shared_prompt(g, [], text, title="Positive prompt")
    g["3"]["inputs"]["positive"] = ["60", 0]
    g["5"]["inputs"]["batch_size"] = ["60", 2]
    g["61"] = {"class_type": "LeaklessTraceGrid", "inputs": {"images": ["8", 0], "labels": ["60", 1],
                                                             "columns": 0, "font_size": 28}}
    g["9"]["inputs"]["images"] = ["61", 0]
    del g["6"]
    return g


def flux_redundant_token_mask():
    """FLUX (T5 is bidirectional): manual mode keeps the token named for each item."""
    text = "a pelican standing on the golden gate bridge"
    g = _flux_prompt_graph(text)
    g["60"] = {"class_type": "LeaklessRedundantTokenMask", "inputs": {
        "clip": ["11", 0], "text": [PROMPT_NODE, 0], "mode": "manual",
        "items": "pelican: lic\ngolden gate bridge: gate", "classifier": "none", "threshold": 0.5,
        "pooled_output": "reference"}, "_meta": {"title": "Redundant Token Mask"}}
    g["26"]["inputs"]["conditioning"] = ["60", 0]
    del g["6"]
    return g


def sdxl_redundant_token_mask():
    """SDXL (causal CLIP): keep the last token of every multi-token word."""
    text = "an axolotl and a quokka having a picnic, watercolor"
    g = graphs.sdxl_default(prompt=text, width=1024, height=1024, steps=20)
    g["60"] = {"class_type": "LeaklessRedundantTokenMask", "inputs": {
        "clip": ["4", 1], "text": [PROMPT_NODE, 0], "mode": "causal rule", "items": "", "classifier": "none",
        "threshold": 0.5, "pooled_output": "reference"}, "_meta": {"title": "Redundant Token Mask"}}
    _shared_prompt(g, [], text, title="Positive prompt")
    g["3"]["inputs"]["positive"] = ["60", 0]
    del g["6"]
    return g


def sdxl_leak_patch():
    """SDXL: the isolated encoding of 'bats' replaces its rows next to 'baseball'."""
    text = "bats hanging in a cave next to a baseball glove"
    g = graphs.sdxl_default(prompt=text, width=1024, height=1024, steps=20)
    g["60"] = {"class_type": "LeaklessLeakPatch", "inputs": {"clip": ["4", 1], "text": [PROMPT_NODE, 0],
                                                             "items": "bats"}, "_meta": {"title": "Leak Patch"}}
    _shared_prompt(g, [], text, title="Positive prompt")
    g["3"]["inputs"]["positive"] = ["60", 0]
    del g["6"]
    return g


def flux_deleaker():
    """'A cow and a horse in a farm' (the paper's example) with entities cow and horse, at 512 px as the paper."""
    g = graphs.flux_dev(width=512, height=512, steps=20)
    g["60"] = {"class_type": "LeaklessDeLeakerEncode", "inputs": {
        "clip": ["11", 0], "text": "A **cow** and a **horse** in a farm", "entities": ""},
        "_meta": {"title": "DeLeaker Encode"}}
    g["61"] = {"class_type": "LeaklessDeLeaker", "inputs": {
        "model": ["30", 0], "entities": ["60", 1], "mask_threshold": 1.0, "image_threshold": 1.0, "alpha": 1.2,
        "mask_history": 0.6, "cross_text": True, "self_text": True, "image_image": True, "alpha_per_pair": False,
        "overlap": "reference"}, "_meta": {"title": "DeLeaker"}}
    g["26"]["inputs"]["conditioning"] = ["60", 0]
    g["22"]["inputs"]["model"] = ["61", 0]
    g["62"] = {"class_type": "LeaklessDeLeakerMasks", "inputs": {"masks": ["61", 1], "images": ["8", 0],
                                                                 "opacity": 0.45, "samples": ["13", 0]}}
    g["63"] = {"class_type": "SaveImage", "inputs": {"images": ["62", 1], "filename_prefix": "deleaker_masks"}}
    del g["6"]
    return g


def sdxl_tome():
    """ToMe's demo prompt at the reference settings (1024 px, 50 steps, CFG 7.5, the reference negative prompt)."""
    text = "a cat wearing sunglasses and a dog wearing a hat"
    g = graphs.sdxl_default(prompt=text, negative="low res, ugly, blurry, artifact, unreal", width=1024,
                            height=1024, steps=50)
    g["3"]["inputs"]["cfg"] = 7.5
    g["60"] = {"class_type": "LeaklessToMeEncode", "inputs": {
        "clip": ["4", 1], "text": [PROMPT_NODE, 0], "groups": "cat: wearing sunglasses; dog: wearing a hat",
        "noun_weight": 1.1, "attribute_weight": 1.2, "end_token_substitution": 0.0, "clean_prompt": ""},
        "_meta": {"title": "ToMe Encode"}}
    g["61"] = {"class_type": "LeaklessToMeSemanticBinding", "inputs": {
        "model": ["4", 0], "binding": ["60", 1], "steps_fraction": 0.2, "entropy_iterations": 6,
        "semantic_iterations": 3, "semantic_lr": 10000.0, "entropy_step": 3.0, "pose_prior": False,
        "semantic_latent": "main latent"},
        "_meta": {"title": "ToMe Semantic Binding"}}
    _shared_prompt(g, [], text, title="Positive prompt")
    g["3"]["inputs"]["positive"] = ["60", 0]
    g["3"]["inputs"]["model"] = ["61", 0]
    del g["6"]
    return g


def flux_leak_patch_deleaker():
    """Two methods together: Leak Patch gives 'bat' its isolated meaning, DeLeaker keeps the bat and the baseball
    player apart in attention. One prompt feeds both; Leak Patch edits DeLeaker Encode's conditioning."""
    text = "a bat flying next to a baseball player in a stadium at night"
    g = graphs.flux_dev(width=512, height=512, steps=20)
    g["60"] = {"class_type": "LeaklessDeLeakerEncode", "inputs": {
        "clip": ["11", 0], "text": [PROMPT_NODE, 0], "entities": "bat, baseball player"},
        "_meta": {"title": "DeLeaker Encode"}}
    g["61"] = {"class_type": "LeaklessLeakPatch", "inputs": {
        "clip": ["11", 0], "text": [PROMPT_NODE, 0], "items": "bat", "conditioning": ["60", 0]},
        "_meta": {"title": "Leak Patch"}}
    g["62"] = {"class_type": "LeaklessDeLeaker", "inputs": {
        "model": ["30", 0], "entities": ["60", 1], "mask_threshold": 1.0, "image_threshold": 1.0, "alpha": 1.2,
        "mask_history": 0.6, "cross_text": True, "self_text": True, "image_image": True, "alpha_per_pair": False,
        "overlap": "reference"}, "_meta": {"title": "DeLeaker"}}
    _shared_prompt(g, [], text)
    g["26"]["inputs"]["conditioning"] = ["61", 0]
    g["22"]["inputs"]["model"] = ["62", 0]
    del g["6"]
    return g


# The newer families in ComfyUI's own templates: (graph, its CLIP loader, its prompt's CLIPTextEncode, the prompt
# node's title). The Leakless node takes the CLIPTextEncode's place; its ids are 90/91 (the Qwen-Image template
# has a node 60).
TEMPLATES = {
    "qwen_image": (graphs.qwen_image, "38", "6", "Positive prompt"),
    "z_image": (graphs.z_image_turbo, "30", "27", "Prompt"),
    "flux2_dev": (graphs.flux2_dev, "38", "6", "Prompt"),
}


def _replace_encode(graph, encode, node_id, node):
    """`node` (a Leakless conditioning node) instead of the CLIPTextEncode `encode`, wherever that one was read."""
    del graph[encode]
    graph[node_id] = node
    for other in graph.values():
        for key, value in other["inputs"].items():
            if value == [encode, 0]:
                other["inputs"][key] = [node_id, 0]
    return graph


def template_token_trace_grid(family):
    """One image per word of the prompt in a labelled grid, on the family's template (512 px: one per subset)."""
    build, clip, encode, title = TEMPLATES[family]
    g = build(width=512, height=512)
    _replace_encode(g, encode, "90", {"class_type": "LeaklessTokenTrace", "inputs": {
        "clip": [clip, 0], "text": [PROMPT_NODE, 0], "mode": "each word", "selection": "",
        "include_full_prompt": True, "pooled_output": "reference"}, "_meta": {"title": "Token Trace"}})
    latent = next(n for n in g.values() if n["class_type"].startswith("Empty"))
    latent["inputs"]["batch_size"] = ["90", 2]
    save = next(n for n in g.values() if n["class_type"] == "SaveImage")
    g["91"] = {"class_type": "LeaklessTraceGrid", "inputs": {"images": save["inputs"]["images"],
                                                             "labels": ["90", 1], "columns": 0, "font_size": 20}}
    save["inputs"]["images"] = ["91", 0]
    return _shared_prompt(g, [], graphs.PROMPT, title=title)


def template_leak_patch(family):
    """'bat' next to 'baseball' on the family's template: the animal is patched in from its isolated encoding."""
    text = "a bat flying over a baseball stadium at night"
    build, clip, encode, title = TEMPLATES[family]
    g = _replace_encode(build(), encode, "90", {"class_type": "LeaklessLeakPatch", "inputs": {
        "clip": [clip, 0], "text": [PROMPT_NODE, 0], "items": "bat"}, "_meta": {"title": "Leak Patch"}})
    return _shared_prompt(g, [], text, title=title)


def _sampling(graph):
    """(the sampler's node id, the inputs of the node that takes the model: the sampler or its guider)."""
    sampler_id = next(i for i, n in graph.items()
                      if n["class_type"] in ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"))
    sampler = graph[sampler_id]["inputs"]
    return sampler_id, sampler if "model" in sampler else graph[sampler["guider"][0]]["inputs"]


def template_deleaker(family):
    """The paper's 'A cow and a horse in a farm' with DeLeaker on the family's template: DeLeaker Encode instead of
    the prompt's CLIPTextEncode, the patch just before the sampler, the masks shown beside the images."""
    build, clip, encode, title = TEMPLATES[family]
    g = _replace_encode(build(), encode, "90", {"class_type": "LeaklessDeLeakerEncode", "inputs": {
        "clip": [clip, 0], "text": "A **cow** and a **horse** in a farm", "entities": ""},
        "_meta": {"title": f"{title} (DeLeaker Encode)"}})
    sampler_id, sampling = _sampling(g)
    g["92"] = {"class_type": "LeaklessDeLeaker", "inputs": {
        "model": sampling["model"], "entities": ["90", 1], "mask_threshold": 1.0, "image_threshold": 1.0,
        "alpha": 1.2, "mask_history": 0.6, "cross_text": True, "self_text": True, "image_image": True,
        "alpha_per_pair": False, "overlap": "reference"}, "_meta": {"title": "DeLeaker"}}
    sampling["model"] = ["92", 0]
    decode = next(i for i, n in g.items() if n["class_type"] == "VAEDecode")
    g["93"] = {"class_type": "LeaklessDeLeakerMasks", "inputs": {"masks": ["92", 1], "images": [decode, 0],
                                                                 "opacity": 0.45, "samples": [sampler_id, 0]}}
    g["94"] = {"class_type": "SaveImage", "inputs": {"images": ["93", 1], "filename_prefix": "deleaker_masks"}}
    return g


def attention_heatmap(graph, encode, text, words):
    """Leakless Heatmap Encode instead of the prompt's CLIPTextEncode `encode` (reading its CLIP), Attention Heatmap
    on the sampler's model, and Heatmap Show on the decoded images (saved: one overlay per word)."""
    g = _replace_encode(graph, encode, "90", {"class_type": "LeaklessHeatmapEncode", "inputs": {
        "clip": graph[encode]["inputs"]["clip"], "text": text, "words": words}, "_meta": {"title": "Heatmap Encode"}})
    sampler_id, sampling = _sampling(g)
    g["91"] = {"class_type": "LeaklessAttentionHeatmap", "inputs": {
        "model": sampling["model"], "entities": ["90", 1], "start_percent": 0.0, "end_percent": 1.0,
        "first_block": 0.0, "last_block": 1.0}, "_meta": {"title": "Attention Heatmap"}}
    sampling["model"] = ["91", 0]
    save = next(n for n in g.values() if n["class_type"] == "SaveImage")
    g["92"] = {"class_type": "LeaklessHeatmapShow", "inputs": {
        "heatmaps": ["91", 1], "images": save["inputs"]["images"], "opacity": 0.6, "samples": [sampler_id, 0]}}
    g["93"] = {"class_type": "SaveImage", "inputs": {"images": ["92", 1], "filename_prefix": "attention_heatmap"}}
    return g


HEATMAP_TEXT = ("A **red cat** sleeping on a **blue sofa**", "")


def flux_attention_heatmap():
    return attention_heatmap(graphs.flux_dev(), "6", *HEATMAP_TEXT)


def sdxl_attention_heatmap():
    return attention_heatmap(graphs.sdxl_default(), "6", *HEATMAP_TEXT)


def z_image_attention_heatmap():
    build, _, encode, _ = TEMPLATES["z_image"]
    return attention_heatmap(build(), encode, *HEATMAP_TEXT)


EXAMPLES = {
    "token_inspector_flux": token_inspector_flux,
    "token_inspector_sdxl": token_inspector_sdxl,
    "flux_leak_patch": flux_leak_patch,
    "sdxl_leak_patch": sdxl_leak_patch,
    "flux_token_trace_grid": flux_token_trace_grid,
    "flux_deleaker": flux_deleaker,
    "sdxl_token_trace_grid": sdxl_token_trace_grid,
    "flux_redundant_token_mask": flux_redundant_token_mask,
    "sdxl_redundant_token_mask": sdxl_redundant_token_mask,
    "sdxl_tome": sdxl_tome,
    "flux_leak_patch_deleaker": flux_leak_patch_deleaker,
    "flux_attention_heatmap": flux_attention_heatmap,
    "sdxl_attention_heatmap": sdxl_attention_heatmap,
    "z_image_attention_heatmap": z_image_attention_heatmap,
    **{f"{family}_{kind}": partial(build, family) for family in TEMPLATES
       for kind, build in (("token_trace_grid", template_token_trace_grid), ("leak_patch", template_leak_patch),
                           ("deleaker", template_deleaker))},
}
EXAMPLE_FAMILY = {name: build.args[0] for name, build in EXAMPLES.items() if isinstance(build, partial)}


def unavailable(name):
    """Why example `name` cannot run on the ComfyUI this process imported (None when it can)."""
    if EXAMPLE_FAMILY.get(name) == "flux2_dev":
        import comfy.text_encoders.flux

        if not hasattr(comfy.text_encoders.flux, "flux2_te"):
            return "this ComfyUI has no FLUX.2"
        if not hasattr(comfy.text_encoders.flux, "from_tekken_json"):
            return ("FLUX.2 dev cannot build its tokenizer on this ComfyUI: it uses transformers' MistralConverter, "
                    "whose signature transformers 5 changed (test_flux2_dev_fails_to_load_where_comfyui_needs_old_"
                    "transformers); its small-decoder VAE does not load there either")
    return None


def shrink(api_prompt, size=64, steps=2):
    """The test substitution: small sizes and few steps, everything else as the workflow has it."""
    for node in api_prompt.values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int):
                inputs[key] = size
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
    return api_prompt
