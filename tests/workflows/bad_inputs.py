"""The bad-input table: generated from every Leakless node's own schema (a new input is covered automatically),
plus explicit cases, and a real API graph for every node to send a case through ComfyUI.

A case is (input id, value); what a refusal must say is in `our_message` (Leakless's own check, run at the start of
execute) and `comfy_refused` (ComfyUI's validation, which catches some of them before execute on some versions).
"""

import math

BAD_OPTIONS = ("not an option", "REFERENCE")  # an unknown value, and a near miss of a real option (wrong case)
COMFY_REFUSALS = ("value_smaller_than_min", "value_bigger_than_max", "value_not_in_list")


def cases(schema):
    """(input, value) for every FLOAT (NaN, +-inf, just outside its range), INT (outside its range) and COMBO
    (an unknown value) input of a node's schema."""
    out = []
    for spec in schema.inputs:
        if spec.io_type in ("FLOAT", "INT"):
            if spec.io_type == "FLOAT":
                out += [(spec.id, math.nan), (spec.id, math.inf), (spec.id, -math.inf)]
            if spec.min is not None:
                out.append((spec.id, spec.min - 1))
            if spec.max is not None:
                out.append((spec.id, spec.max + 1))
        elif spec.io_type == "COMBO":
            out += [(spec.id, v) for v in BAD_OPTIONS if v not in spec.options]
    return out


def spec_of(schema, input_id):
    return next(s for s in schema.inputs if s.id == input_id)


def our_message(schema, input_id) -> list[str]:
    """What Leakless's refusal must contain: the node, the input, and the fix (the range or every option)."""
    spec = spec_of(schema, input_id)
    parts = [f"{schema.display_name}: input '{input_id}': ", " Fix: "]
    if spec.io_type == "COMBO":
        parts += [repr(o) for o in spec.options]
    elif spec.min is not None and spec.max is not None:
        parts.append(f"from {spec.min:g} to {spec.max:g}")
    return parts


def comfy_refused(message: str, input_id: str) -> bool:
    """ComfyUI's own validation refused the value of `input_id` (the prompt never ran)."""
    return message.startswith("invalid prompt") and input_id in message and any(t in message for t in COMFY_REFUSALS)


def widget_defaults(schema) -> dict:
    return {s.id: s.default for s in schema.inputs if s.io_type in ("FLOAT", "INT", "COMBO", "STRING", "BOOLEAN")
            and not getattr(s, "force_input", False)}


COW = "a **cow** and a **horse** in a farm"
TOME = ("a cat wearing sunglasses and a dog wearing a hat", "cat: wearing sunglasses; dog: wearing a hat")


def graph(node_id, schema, **values):
    """An API graph that runs `node_id` (node "x") with its widget defaults overridden by `values`, its links fed
    by the tiny models, and a PreviewAny on its first output."""
    sources = {
        "CLIP": ["fluxclip", 0] if node_id == "LeaklessDeLeakerEncode" else ["ckpt", 1],
        "MODEL": ["flux", 0] if node_id == "LeaklessDeLeaker" else ["ckpt", 0],
        "IMAGE": ["img", 0], "STRING": ["trace", 1], "LEAKLESS_ENTITIES": ["enc", 1],
        "LEAKLESS_DELEAKER_MASKS": ["dl", 1], "LEAKLESS_TOME_BINDING": ["tome", 1],
    }
    inputs = widget_defaults(schema)
    for spec in schema.inputs:
        if spec.id not in inputs and not spec.optional:
            inputs[spec.id] = sources[spec.io_type]
    if "text" in inputs:  # a prompt the node accepts, so only the bad value can stop it
        inputs["text"] = COW if node_id == "LeaklessDeLeakerEncode" else TOME[0]
    if node_id == "LeaklessToMeEncode":
        inputs["groups"] = TOME[1]
    inputs.update(values)
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "fluxclip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                                "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "flux": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                        "weight_dtype": "default"}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "trace": {"class_type": "LeaklessTokenTrace", "inputs": {
            "clip": ["ckpt", 1], "text": "a cat", "mode": "each word", "selection": "", "include_full_prompt": True,
            "pooled_output": "reference"}},
        "enc": {"class_type": "LeaklessDeLeakerEncode", "inputs": {"clip": ["fluxclip", 0], "text": COW,
                                                                   "entities": ""}},
        "dl": {"class_type": "LeaklessDeLeaker", "inputs": {
            "model": ["flux", 0], "mask_threshold": 1.0, "image_threshold": 1.0, "alpha": 1.2, "mask_history": 0.6,
            "cross_text": True, "self_text": True, "image_image": True, "alpha_per_pair": False,
            "overlap": "reference", "entities": ["enc", 1]}},
        "tome": {"class_type": "LeaklessToMeEncode", "inputs": {
            "clip": ["ckpt", 1], "text": TOME[0], "groups": TOME[1], "noun_weight": 1.1, "attribute_weight": 1.2,
            "end_token_substitution": 0.0, "clean_prompt": ""}},
        "x": {"class_type": node_id, "inputs": inputs},
        "out": {"class_type": "PreviewAny", "inputs": {"source": ["x", 0]}},
    }


def linked(g, input_id, value):
    """Feed `input_id` of node "x" from a Primitive node: ComfyUI never checks a linked value against the range."""
    kind = "PrimitiveFloat" if isinstance(value, float) else "PrimitiveInt"
    g["prim"] = {"class_type": kind, "inputs": {"value": value}}
    g["x"]["inputs"][input_id] = ["prim", 0]
    return g
