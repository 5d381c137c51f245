"""The bad-input tables: one generated from every Leakless node's own schema (a new input is covered automatically),
one of explicit rows (ROWS: a class of bad or edge input -> the refusal's text or a property of the output, for every
node and the token picker route), and a real API graph for every node to send a case through ComfyUI.

A case is (input id, value); what a refusal must say is in `our_message` (Leakless's own check, run at the start of
execute) and `comfy_refused` (ComfyUI's validation, which catches some of them before execute on some versions).
"""

import json
import math
from dataclasses import dataclass, field

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


def graph(node_id, schema, preview=0, upstream=None, **values):
    """An API graph that runs `node_id` (node "x") with its widget defaults overridden by `values`, its links fed
    by the tiny models, and a PreviewAny ("out") on its output `preview`; `upstream`: inputs changed in the graph's
    other nodes ({"tome": {"groups": ...}})."""
    sources = {
        "CLIP": ["fluxclip", 0] if node_id == "LeaklessDeLeakerEncode" else ["ckpt", 1],
        "MODEL": ["flux", 0] if node_id in ("LeaklessDeLeaker", "LeaklessAttentionHeatmap") else ["ckpt", 0],
        "IMAGE": ["img", 0], "STRING": ["trace", 1], "LEAKLESS_ENTITIES": ["enc", 1],
        "LEAKLESS_DELEAKER_MASKS": ["dl", 1], "LEAKLESS_TOME_BINDING": ["tome", 1], "LEAKLESS_HEATMAPS": ["hm", 1],
    }
    inputs = widget_defaults(schema)
    for spec in schema.inputs:
        if spec.id not in inputs and not spec.optional:
            inputs[spec.id] = sources[spec.io_type]
    if "text" in inputs:  # a prompt the node accepts, so only the bad value can stop it
        inputs["text"] = COW if node_id in ("LeaklessDeLeakerEncode", "LeaklessHeatmapEncode") else TOME[0]
    if node_id == "LeaklessToMeEncode":
        inputs["groups"] = TOME[1]
    inputs.update(values)
    g = {
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
        "hm": {"class_type": "LeaklessAttentionHeatmap", "inputs": {
            "model": ["flux", 0], "entities": ["enc", 1], "start_percent": 0.0, "end_percent": 1.0,
            "first_block": 0.0, "last_block": 1.0}},
        "tome": {"class_type": "LeaklessToMeEncode", "inputs": {
            "clip": ["ckpt", 1], "text": TOME[0], "groups": TOME[1], "noun_weight": 1.1, "attribute_weight": 1.2,
            "end_token_substitution": 0.0, "clean_prompt": ""}},
        "blank": {"class_type": "PrimitiveString", "inputs": {"value": ""}},
        "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "x": {"class_type": node_id, "inputs": inputs},
        "out": {"class_type": "PreviewAny", "inputs": {"source": ["x", preview]}},
    }
    for node, changed in (upstream or {}).items():
        g[node]["inputs"].update(changed)
    return g


def deleaker_run(schema, mask_threshold=1.0, **masks_values):
    """A FLUX sampling through Leakless DeLeaker, decoded, with Leakless DeLeaker Masks (`schema`) as node "x"."""
    g = graph("LeaklessDeLeakerMasks", schema, upstream={"dl": {"mask_threshold": mask_threshold}}, masks=["dl", 1],
              images=["dec", 0], opacity=0.45, samples=["ks", 0])
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["dl", 0], "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["enc", 0], "negative": ["enc", 0], "latent_image": ["lat", 0], "denoise": 1.0}}
    g["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
    g["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}}
    g["x"]["inputs"].update(masks_values)
    return g


def other_encoder_run(schema, **values):
    """A FLUX sampling through Leakless DeLeaker (`schema`, node "x") with DeLeaker Encode's entities from FLUX's
    CLIP, and as the positive prompt the same text encoded by Chroma's text encoder (T5 alone), which the FLUX
    adapter also reads."""
    g = graph("LeaklessDeLeaker", schema, entities=["enc", 1], **values)
    g["chroma"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5xxl_fp16.safetensors", "type": "chroma"}}
    g["enc2"] = {"class_type": "LeaklessDeLeakerEncode", "inputs": {"clip": ["chroma", 0], "text": COW,
                                                                    "entities": ""}}
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["x", 0], "seed": 7, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["enc2", 0], "negative": ["enc2", 0], "latent_image": ["lat", 0], "denoise": 1.0}}
    g["out"]["inputs"]["source"] = ["ks", 0]
    return g


# ----------------------------------------------------------------------------------------------------------
# The explicit table: one row per class of bad or edge input


ROUTE = "route"  # a row for POST /leakless/tokenize
NAMES = {"LeaklessTokenInspector": "Leakless Token Inspector", "LeaklessTokenTrace": "Leakless Token Trace",
         "LeaklessTraceGrid": "Leakless Trace Grid", "LeaklessRedundantTokenMask": "Leakless Redundant Token Mask",
         "LeaklessLeakPatch": "Leakless Leak Patch", "LeaklessDeLeakerEncode": "Leakless DeLeaker Encode",
         "LeaklessDeLeaker": "Leakless DeLeaker", "LeaklessDeLeakerMasks": "Leakless DeLeaker Masks",
         "LeaklessHeatmapEncode": "Leakless Heatmap Encode", "LeaklessAttentionHeatmap": "Leakless Attention Heatmap",
         "LeaklessHeatmapShow": "Leakless Heatmap Show",
         "LeaklessToMeEncode": "Leakless ToMe Encode", "LeaklessToMeSemanticBinding": "Leakless ToMe Semantic Binding"}


@dataclass(frozen=True)
class Row:
    """`node` given `values` (a route row: the JSON body, or bytes sent as they are) either is refused with an
    error naming the node and `refuses` (an input), holding every fragment of `expect` and none of `absent`, or
    (refuses "") runs, and the text its PreviewAny shows (route: the answer) holds every fragment of `expect` and
    none of `absent`."""

    kind: str  # the class of input, e.g. "numeric word"
    node: str
    values: dict | bytes
    refuses: str
    expect: tuple[str, ...]
    absent: tuple[str, ...] = ()
    preview: int = 0  # the output "out" shows
    upstream: dict = field(default_factory=dict)
    run: str = "node"  # "node": graph(); "deleaker run": deleaker_run(); "other encoder": other_encoder_run()

    @property
    def shows(self) -> str:
        """The graph node whose ui text the row reads."""
        return "x" if self.run == "deleaker run" else "out"

    @property
    def id(self) -> str:
        return f"{self.node}-{self.kind}".replace(" ", "_")

    def graph(self, schema) -> dict:
        if self.run == "deleaker run":
            return deleaker_run(schema, **self.values)
        if self.run == "other encoder":
            return other_encoder_run(schema, **self.values)
        return graph(self.node, schema, self.preview, self.upstream, **self.values)

    def body(self) -> bytes:
        return self.values if isinstance(self.values, bytes) else json.dumps(self.values).encode()

    def check(self, message: str | None, shown: str | None) -> list:
        """What is wrong with an outcome (`message`: the refusal, None if it ran; `shown`: the output text)."""
        if self.refuses:
            want = [f"{NAMES.get(self.node, '')}: input '{self.refuses}': " if self.node != ROUTE else "", *self.expect]
            return [f"refusal lacks {w!r}" for w in want if w not in (message or "")] + [
                f"refusal holds {w[:40]!r}..." for w in self.absent if w in (message or "")] + (
                [] if message is not None else ["it ran"])
        if message is not None:
            return [f"refused: {message}"]
        return [f"output lacks {w!r}" for w in self.expect if w not in (shown or "")] + [
            f"output holds {w!r}" for w in self.absent if w in (shown or "")]


SDXL_TEXT = "a 1984 poster with 3 cats"
LONG = "x" * 100_001
SURROGATE = "a \ud800 cat"
WHITE = "A black and white cat sits in a white sink"
ROLLS = "a round cinnamon roll and a round toaster pastry"
IN, T, G, R, P, E, D, M, TE, TS = ("LeaklessTokenInspector", "LeaklessTokenTrace", "LeaklessTraceGrid",
                                  "LeaklessRedundantTokenMask", "LeaklessLeakPatch", "LeaklessDeLeakerEncode",
                                  "LeaklessDeLeaker", "LeaklessDeLeakerMasks", "LeaklessToMeEncode",
                                  "LeaklessToMeSemanticBinding")
SELECT = {"mode": "selection", "include_full_prompt": False}
HE, H, HS = "LeaklessHeatmapEncode", "LeaklessAttentionHeatmap", "LeaklessHeatmapShow"
TINY_IMAGES = {"width": 16, "height": 16}  # Trace Grid rows: their images come from "img"
LONG_PROMPT = " ".join(f"w{i}" for i in range(5000))  # 5,000 different words

ROWS = [
    # the token picker route
    Row("text not a string", ROUTE, {"text": 5, "family": "sdxl"}, "text", ("'text' must be a string",)),
    Row("text missing", ROUTE, {"family": "sdxl"}, "text", ("'text' must be a string",)),
    Row("unknown family", ROUTE, {"text": "a cat", "family": "sd4"}, "family", ("one of flux, sdxl, sd15",)),
    Row("family missing", ROUTE, {"text": "a cat"}, "family", ("'family' must be one of",)),
    Row("huge text", ROUTE, {"text": "a " * 10_001, "family": "flux"}, "text", ("the limit is 20000",)),
    Row("lone surrogate", ROUTE, {"text": SURROGATE, "family": "flux"}, "text", ("lone surrogate (\\ud800)",)),
    Row("not JSON", ROUTE, b"not json", "body", ("must be JSON",)),
    Row("not UTF-8", ROUTE, b'{"text": "a \xff cat", "family": "flux"}', "body", ("must be JSON",)),
    Row("JSON array", ROUTE, b"[1, 2]", "body", ("JSON object",)),
    Row("deep JSON", ROUTE, b"[" * 100_000 + b"]" * 100_000, "body", ("nests too deeply",)),
    Row("deep parentheses", ROUTE, {"text": "(" * 2000 + "cat" + ")" * 2000, "family": "sdxl"}, "text",
        ("nest too deeply",)),
    Row("empty text", ROUTE, {"text": "", "family": "sdxl"}, "", ('"words": []', '"kind": ["bos", "eos"]')),
    Row("numeric word", ROUTE, {"text": SDXL_TEXT, "family": "sdxl"}, "", ('"word": "1984"',)),
    Row("word glued to embedding", ROUTE, {"text": "a (cat)embedding:mystyle", "family": "flux"}, "",
        ('"word": "cat"', '"word": "embedding:mystyle"'), ("catembedding",)),
    # Token Inspector
    Row("huge text", IN, {"text": "a " * 10_001}, "text", ("at most 20000",)),
    Row("over the text cap", IN, {"text": LONG}, "text", ("100,001 characters", "at most 100,000")),
    Row("lone surrogate", IN, {"text": SURROGATE}, "text", ("lone surrogate (\\ud800) at character 2",)),
    Row("deep parentheses", IN, {"text": "(" * 2000 + "cat" + ")" * 2000}, "text", ("nest too deeply",)),
    Row("empty text", IN, {"text": ""}, "", ("<|startoftext|>", "<|endoftext|>")),
    Row("word glued to embedding", IN, {"text": "a (cat)embedding:missing dog"}, "", (" cat ", " dog\n"),
        ("catembedding",)),
    Row("long family", ROUTE, {"text": "a cat", "family": "f" * 10_000}, "family", ("one of flux",
                                                                                   "(10,000 characters)"),
        absent=("f" * 100,)),
    # Token Trace
    Row("numeric word read as a position", T, {"text": SDXL_TEXT, "selection": "3", **SELECT}, "selection",
        ("read as token position(s) 3", 'write "3" for the word', "@3 for the position")),
    Row("quoted numeric word", T, {"text": SDXL_TEXT, "selection": '"1984"', **SELECT}, "", ('"1984"',), preview=1),
    Row("explicit position", T, {"text": SDXL_TEXT, "selection": "@3", **SELECT}, "", ("9",), ("@3",), preview=1),
    Row("position out of range", T, {"text": SDXL_TEXT, "selection": "300", **SELECT}, "selection",
        ("out of range", "(0-76)", 'write "300" to name a word')),
    Row("empty selection", T, {"text": "a cat", "selection": " ;\n ", **SELECT}, "selection", ("it is empty",)),
    Row("unknown word", T, {"text": "a cat", "selection": "horse", **SELECT}, "selection",
        ("'horse' is not in the prompt", "'a', 'cat'")),
    Row("empty range", T, {"text": "a cat", "selection": "9-3", **SELECT}, "selection", ("empty range",)),
    Row("zero occurrence", T, {"text": "a cat", "selection": "cat#0", **SELECT}, "selection", ("count from 1",)),
    Row("missing occurrence", T, {"text": "a cat", "selection": "cat#5", **SELECT}, "selection",
        ("occurs 1 time(s), not 5",)),
    Row("unclosed quote", T, {"text": "a cat", "selection": '"cat', **SELECT}, "selection", ("unclosed",)),
    Row("stray quote", T, {"text": "a cat", "selection": 'big "cat"', **SELECT}, "selection",
        ("quotes go around a whole phrase",)),
    Row("positions word of a number", T, {"text": SDXL_TEXT, "selection": "@1984", **SELECT}, "selection",
        ("position 1984 is out of range",)),
    Row("empty prompt", T, {"text": "", "mode": "each word"}, "text", ("no tokens to trace",)),
    Row("over the text cap", T, {"selection": LONG, **SELECT}, "selection", ("at most 100,000",)),
    Row("lone surrogate", T, {"selection": SURROGATE, **SELECT}, "selection", ("lone surrogate",)),
    Row("segments are words", T, {"text": "(red)(cat)", "mode": "each word", "include_full_prompt": False}, "",
        ("red: red", "cat: cat"), ("redcat",), preview=1),
    Row("all but selection", T, {"text": "a cat", "selection": "cat", "mode": "all but selection",
                                 "include_full_prompt": False}, "", ("without cat",), ("<pad",), preview=1),
    Row("selection over the subset cap", T, {"selection": "\n".join(["cat"] * 10_000), **SELECT}, "selection",
        ("10,000 subsets", "at most 256", "Trace Grid")),
    Row("each token over the subset cap", T, {"text": "cat " * 600, "mode": "each token"}, "mode",
        ("600 subsets", "at most 256", "'selection'")),
    Row("selection over the phrase cap", T, {"selection": ", ".join(["cat"] * 1025), **SELECT}, "selection",
        ("1,025 phrases", "at most 1,024")),
    Row("long unclosed quote", T, {"selection": '"' + "x" * 10_000, **SELECT}, "selection",
        ("unclosed", "(10,001 characters)"), absent=("x" * 100,)),
    # Trace Grid
    Row("labels for other images", G, {}, "images", ("Token Trace's 'count'",)),
    Row("no labels", G, {"labels": ["blank", 0]}, "labels", ("no labels were given",),
        upstream={"trace": {"text": "a cat"}}),
    Row("100,000-character label", G, {"labels": ["blank", 0]}, "", (),
        upstream={"blank": {"value": "x" * 100_000}, "img": TINY_IMAGES}),
    Row("over the label cap", G, {"labels": ["blank", 0]}, "labels", ("257 labels", "at most 256"),
        upstream={"blank": {"value": "\n".join(["x"] * 257)}, "img": {**TINY_IMAGES, "batch_size": 257}}),
    Row("over the image cap", G, {"labels": ["blank", 0]}, "images", ("1,025 images", "at most 1,024"),
        upstream={"blank": {"value": "x"}, "img": {"width": 1, "height": 1, "batch_size": 1025}}),
    # Redundant Token Mask
    Row("numeric word item", R, {"text": SDXL_TEXT, "items": "1984"}, "", ("1984",), preview=1),
    Row("ambiguous token index", R, {"text": SDXL_TEXT, "mode": "manual", "items": "1984: 1"}, "items",
        ("also one of its tokens", "#1 for the index", '"1" for the token')),
    Row("quoted token text", R, {"text": SDXL_TEXT, "mode": "manual", "items": '1984: "9"'}, "", ("1984",),
        preview=1),
    Row("unknown item", R, {"text": "a cat", "items": "horse"}, "items", ("'horse' is not in the prompt",)),
    Row("position as an item", R, {"text": "a cat", "items": "@1"}, "items", ("not token positions",)),
    Row("classifier mode without a file", R, {"mode": "classifier"}, "classifier", ("none is selected",)),
    Row("manual without tokens", R, {"mode": "manual", "items": "cat"}, "items", ("which tokens to keep",)),
    Row("over the item cap", R, {"items": "\n".join(["cat"] * 257)}, "items", ("257 items", "at most 256")),
    # Leak Patch
    Row("no items", P, {"items": " "}, "items", ("no item was given",)),
    Row("numeric word item", P, {"text": SDXL_TEXT, "items": "1984"}, "", ("1984: pasted",), preview=1),
    Row("unknown item", P, {"items": "horse"}, "items", ("'horse' is not in the prompt",)),
    Row("position as an item", P, {"items": "@3"}, "items", ("not token positions ('@3')",)),
    Row("missing number word", P, {"items": "9999"}, "items", ("'9999' was read as a word",)),
    Row("word glued to embedding", P, {"text": "a (cat)embedding:missing dog", "items": "cat"}, "",
        ("cat: pasted",), preview=1),
    Row("lone surrogate", P, {"items": SURROGATE}, "items", ("lone surrogate",)),
    Row("over the item cap", P, {"items": "\n".join(["cat"] * 65)}, "items", ("65 items", "at most 64")),
    Row("phrase over the length cap", P, {"items": "cat" + " cat" * 100}, "items",
        ("403 characters", "at most 200")),
    Row("unknown item in a long prompt", P, {"text": LONG_PROMPT, "items": "horse"}, "items",
        ("'horse' is not in the prompt", "'w0'", "more"), absent=("w4999",)),
    # DeLeaker Encode
    Row("one entity", E, {"text": "a cow", "entities": "cow"}, "entities", ("1 entity given",)),
    Row("same entity twice", E, {"text": "a cow and a horse", "entities": "cow, cow"}, "entities", ("cow",)),
    Row("overlapping entities", E, {"text": "a cow and a horse", "entities": "cow, a cow"}, "entities",
        ("a cow",)),
    Row("marks and entities", E, {"entities": "cow, horse"}, "entities", ("only one of them",)),
    Row("numeric entities", E, {"text": "2 cows and 3 horses", "entities": "2, 3"}, "",
        ("names=('2', '3')",), preview=1),
    Row("position entities", E, {"text": "a cow and a horse", "entities": "@1, @2"}, "entities",
        ("not token positions",)),
    Row("no entities at all", E, {"text": "a cow and a horse", "entities": ""}, "entities", ("0 entities given",)),
    Row("unknown entity", E, {"text": "a cow and a horse", "entities": "cow, dog"}, "entities",
        ("'dog' is not in the prompt",)),
    Row("second occurrence", E, {"text": "a cat and a cat", "entities": "cat, cat#2"}, "",
        ("names=('cat', 'cat#2')",), preview=1),
    Row("lone surrogate", E, {"text": SURROGATE}, "text", ("lone surrogate",)),
    Row("over the text cap", E, {"entities": LONG}, "entities", ("at most 100,000",)),
    Row("over the entity cap", E, {"text": "a cow", "entities": ", ".join(f"cow#{i}" for i in range(1, 18))},
        "entities", ("17 entities", "at most 16")),
    Row("over the entity cap in marks", E, {"text": " ".join(["a **cow**"] * 17)}, "text",
        ("17 entities", "at most 16")),
    Row("number with a thousands comma", E, {"text": "1,000 cows and a horse", "entities": "1,000 cows, horse"},
        "entities", ('"1,000 cows"', "double quotes")),
    # DeLeaker
    Row("not a joint-attention model", D, {"model": ["ckpt", 0]}, "model",
        ("which this model (SD", "connect a model of")),
    Row("missing optional entities", D, {}, "", ("ModelPatcher",)),
    Row("every edit off", D, {"entities": ["enc", 1], "cross_text": False, "self_text": False,
                              "image_image": False}, "", ("ModelPatcher",)),
    Row("entities connected", D, {"entities": ["enc", 1]}, "", ("ModelPatcher",)),
    Row("text as entities", D, {"entities": "cow, horse"}, "entities",
        ("'cow, horse' (str)", "Leakless DeLeaker Encode", "Leakless Heatmap Encode")),
    Row("same text from another text encoder", D, {}, "entities",
        ("the same text", "Chroma", "FLUX.1 / Kontext / Krea", "T5-XXL"), run="other encoder"),
    # DeLeaker Masks
    Row("no sampling ran", M, {}, "samples", ("no sampling with this Leakless DeLeaker model ran",)),
    Row("latent of no run", M, {"samples": ["lat", 0]}, "samples", ("these latents were not made",)),
    Row("every mask empty", M, {"mask_threshold": 5.0}, "", ("found none of the entities", "mask_threshold"),
        run="deleaker run"),
    Row("text as masks", M, {"masks": "cow"}, "masks", ("'cow' (str)", "Leakless DeLeaker's 'masks'")),
    # Heatmap Encode
    Row("no words", HE, {"text": "a cow and a horse", "words": ""}, "words", ("no words given",)),
    Row("unknown word", HE, {"text": "a cow", "words": "dog"}, "words", ("'dog' is not in the prompt",)),
    Row("one marked word", HE, {"text": "a **cow** in a farm", "words": ""}, "", ("names=('cow',)",), preview=1),
    Row("SDXL CLIP", HE, {"clip": ["ckpt", 1], "text": "a cow", "words": "cow"}, "", ("family='sdxl'",), preview=1),
    Row("over the word cap", HE, {"words": ", ".join(["cow"] * 33)}, "words", ("33 words", "at most 32")),
    Row("number with a thousands comma", HE, {"text": "1,000 cows", "words": "1,000"}, "words",
        ('"1,000"', "double quotes")),
    # Attention Heatmap
    Row("words of another model", H, {"model": ["ckpt", 0]}, "entities",
        ("they come from a FLUX.1 / Kontext / Krea prompt, and the model is SDXL",)),
    Row("window ends before it starts", H, {"start_percent": 0.8, "end_percent": 0.2}, "end_percent",
        ("0.2 is below start_percent",)),
    Row("entities connected", H, {}, "", ("ModelPatcher",)),
    Row("number as entities", H, {"entities": 5}, "entities", ("5 (int)", "Leakless Heatmap Encode")),
    # Heatmap Show
    Row("no sampling ran", HS, {}, "samples", ("no sampling with this Leakless Attention Heatmap model ran",)),
    Row("latent of no run", HS, {"samples": ["lat", 0]}, "samples", ("these latents were not made",)),
    Row("number as heatmaps", HS, {"heatmaps": 1.5}, "heatmaps", ("1.5 (float)", "Leakless Attention Heatmap")),
    # ToMe Encode
    Row("attribute before its noun", TE, {"text": WHITE, "groups": "cat: black, white"}, "",
        ("noun=(5,), attributes=(2, 4)",), preview=1),
    Row("repeated attribute per noun", TE, {"text": ROLLS, "groups": "cinnamon roll: round; toaster pastry: round"},
        "", ("attributes=(2,)", "attributes=(7,)"), preview=1),
    Row("explicit occurrences", TE, {"text": ROLLS, "groups": "cinnamon roll: round#1; toaster pastry: round#2"},
        "", ("attributes=(2,)", "attributes=(7,)"), preview=1),
    Row("explicit far occurrence", TE, {"text": ROLLS, "groups": "cinnamon roll: round#2"}, "",
        ("noun=(3, 4), attributes=(7,)",), preview=1),
    Row("shared attribute", TE, {"text": "a red cat and a dog and a red bird",
                                 "groups": "cat: red; dog: red; bird: red"}, "groups",
        ("share the word 'red'", "'#n'")),
    Row("no occurrence near the noun", TE, {"text": "a red cat and a red dog and a bird",
                                            "groups": "cat: red; dog: red; bird: red"}, "groups",
        ("none of them is next to its noun 'bird'", "red#1 ('a red cat and')", "red#2")),
    Row("numeric noun and attribute", TE, {"text": "a 1984 poster and 2 cats", "groups": "poster: 1984; cats: 2"},
        "", ("noun=(6,), attributes=(2, 3, 4, 5)", "noun=(9,), attributes=(8,)"), preview=1),
    Row("no colon", TE, {"groups": "cat"}, "groups", ("is not 'noun: attribute",)),
    Row("no attributes", TE, {"groups": "cat:"}, "groups", ("no attributes",)),
    Row("two nouns", TE, {"groups": "cat, dog: red"}, "groups", ("one noun per group",)),
    Row("attribute is the noun", TE, {"groups": "cat: cat"}, "groups", ("the noun itself",)),
    Row("unknown noun", TE, {"groups": "horse: red"}, "groups", ("'horse' is not in the prompt",)),
    Row("position noun", TE, {"groups": "@2: wearing"}, "groups", ("not token positions",)),
    Row("prompt over one chunk", TE, {"text": "cat " * 80, "groups": "cat: cat#2"}, "text", ("CLIP chunks",)),
    Row("FLUX CLIP", TE, {"clip": ["fluxclip", 0]}, "clip", ("ToMe merges CLIP token rows of SDXL and SD1.5",
                                                              "CLIP for FLUX.1")),
    Row("lone surrogate", TE, {"clean_prompt": SURROGATE}, "clean_prompt", ("lone surrogate",)),
    Row("over the text cap", TE, {"groups": LONG}, "groups", ("at most 100,000",)),
    Row("over the group cap", TE, {"groups": "\n".join(["cat: wearing"] * 17)}, "groups",
        ("17 groups", "at most 16")),
    Row("text over the ToMe cap", TE, {"text": "cat " * 600, "groups": "cat: cat#2"}, "text",
        ("2,400 characters", "at most 2,000")),
    Row("clean prompt over the ToMe cap", TE, {"clean_prompt": "cat " * 600}, "clean_prompt",
        ("2,400 characters", "at most 2,000")),
    # ToMe Semantic Binding
    Row("not an SDXL model", TS, {"model": ["flux", 0]}, "model", ("it reads SDXL's cross-attention",)),
    Row("pose prior with one group", TS, {"pose_prior": True}, "pose_prior", ("there are 1 groups",),
        upstream={"tome": {"groups": "cat: wearing sunglasses"}}),
    Row("every update off", TS, {"entropy_iterations": 0, "semantic_iterations": 0}, "", ("ModelPatcher",)),
    Row("object as binding", TS, {"binding": {"groups": "cat: red"}}, "binding",
        ("(dict)", "Leakless ToMe Encode's 'binding'")),
]


def linked(g, input_id, value):
    """Feed `input_id` of node "x" from a Primitive node: ComfyUI never checks a linked value against the range."""
    kind = "PrimitiveFloat" if isinstance(value, float) else "PrimitiveInt"
    g["prim"] = {"class_type": kind, "inputs": {"value": value}}
    g["x"]["inputs"][input_id] = ["prim", 0]
    return g
