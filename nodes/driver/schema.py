"""The V3 schema pieces the node modules share: Leakless's own socket types and the outputs of the nodes that
encode a prompt and find phrases in it."""

from __future__ import annotations

from comfy_api.latest import io

from ..registry import families

ENTITIES = io.Custom("LEAKLESS_ENTITIES")  # methods.phrases.Phrases: DeLeaker's entities, the heatmap's words
MASKS = io.Custom("LEAKLESS_DELEAKER_MASKS")  # results.RunResults of DeLeaker's runs
HEATMAPS = io.Custom("LEAKLESS_HEATMAPS")  # results.RunResults of the heatmap's runs
BINDING = io.Custom("LEAKLESS_TOME_BINDING")  # methods.tome_patch.BindingSpec


def clip_input(tooltip: str | None = None):
    return io.Clip.Input("clip", tooltip=tooltip or f"The CLIP that encodes the prompt: {families.loaders()}. "
                         "LoRA-patched and clip-skip CLIPs work as usual.")


def text_input(tooltip: str | None = None):
    """The prompt a node tokenizes or encodes itself (a text primitive can feed it and CLIPTextEncode alike)."""
    return io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip=tooltip or (
        "The prompt, written exactly as for CLIPTextEncode; this node encodes it itself."))


def encode_outputs(phrases_tooltip: str) -> list:
    """The outputs of a node that encodes a prompt and finds phrases: the conditioning, and the phrases' rows."""
    return [io.Conditioning.Output("conditioning", display_name="conditioning",
                                   tooltip="The prompt's conditioning (marks removed): the sampler's positive."),
            ENTITIES.Output("entity_spec", display_name="entities", tooltip=phrases_tooltip)]


def inputs(settings) -> list:
    """The V3 inputs of declared settings (methods/settings.py), in order: each one's default, range and tooltip
    come from its declaration alone."""
    made = []
    for s in settings:
        common = {"default": s.default, "tooltip": s.tooltip_text(), "optional": s.optional}
        if s.kind == "float":
            made.append(io.Float.Input(s.name, min=s.min, max=s.max, step=s.step, **common))
        elif s.kind == "int":
            made.append(io.Int.Input(s.name, min=s.min, max=s.max, **common))
        elif s.kind == "bool":
            made.append(io.Boolean.Input(s.name, **common))
        elif s.kind == "choice":
            made.append(io.Combo.Input(s.name, options=list(s.options), **common))
        else:
            raise ValueError(f"setting {s.name}: unknown kind {s.kind!r}")
    return made
