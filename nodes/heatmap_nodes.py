"""Attention heatmap nodes: Leakless Heatmap Encode, Leakless Attention Heatmap (model patch), Leakless Heatmap Show.
The patch (nodes/methods/heatmap_patch.py) only reads: the images are bit-identical with it on. The driver
(nodes/driver/patching.py) puts it on a clone of the MODEL."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .driver import patching
from .driver.clip import encode_phrases
from .driver.results import RunResults, check_images
from .driver.schema import ENTITIES, HEATMAPS, clip_input, encode_outputs, inputs, text_input
from .driver.validation import check_inputs
from .errors import LeaklessInputError
from .methods import heatmap, heatmap_patch
from .methods.heatmap_patch import ENCODE_FIX, HeatmapPatch
from .registry import families, models

WRAPPER_KEY = "leakless_heatmap"


class HeatmapEncode(io.ComfyNode):
    NAME = "Leakless Heatmap Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessHeatmapEncode",
            display_name=cls.NAME,
            category="Leakless/heatmap",
            description=("Encodes a prompt (like CLIPTextEncode) and finds the tokens of the words whose attention "
                         "heatmaps Leakless Attention Heatmap records. Mark words as 'a **cow** in a farm' (the "
                         "marks are removed before encoding) or list them in 'words'."),
            inputs=[
                clip_input(f"The text encoder of the model: {families.loaders()}."),
                text_input((
                    "The prompt. Words may be marked with double asterisks: 'a **red cat** on a sofa'.")),
                io.String.Input("words", default="", tooltip=(
                    "Words, comma-separated ('cat, sofa'; 'cat#2' for the second 'cat'), if not marked in the text. "
                    "At least one; each must be words of the prompt.")),
            ],
            outputs=encode_outputs("The words and their token rows: connect to Leakless Attention Heatmap."),
        )

    @classmethod
    def execute(cls, clip, text, words) -> io.NodeOutput:
        check_inputs(cls, locals())
        return io.NodeOutput(*encode_phrases(cls.NAME, clip, text, words, "words", lambda family: None,
                                             lambda refs: None if refs else "no words given; a heatmap needs at "
                                             "least one", "name one or more words of the prompt, e.g. 'cow, horse', "
                                             "or mark them as **cow**.", disjoint=False))


class AttentionHeatmap(io.ComfyNode):
    NAME = "Leakless Attention Heatmap"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessAttentionHeatmap",
            display_name=cls.NAME,
            category="Leakless/heatmap",
            description=(
                "Records where the image looks at each word: the image tokens' attention to each word's tokens, "
                "averaged over heads, the chosen blocks and steps, during any sampler. It does not change the image. "
                f"{models.names()}. Show the maps with Leakless Heatmap Show."),
            inputs=[
                io.Model.Input("model", tooltip="The model; a clone is patched, the input is not changed."),
                ENTITIES.Input("entities", tooltip="From Leakless Heatmap Encode (or DeLeaker Encode), whose "
                               "conditioning must be this sampler's positive prompt."),
                *inputs(heatmap_patch.SETTINGS),
            ],
            outputs=[
                io.Model.Output("patched", display_name="model", tooltip="The patched clone."),
                HEATMAPS.Output("heatmaps", display_name="heatmaps",
                                tooltip="After sampling, Leakless Heatmap Show shows the maps."),
            ],
        )

    @classmethod
    def execute(cls, model, entities, start_percent, end_percent, first_block, last_block) -> io.NodeOutput:
        check_inputs(cls, locals())
        for first, last, names in ((start_percent, end_percent, ("start_percent", "end_percent")),
                                   (first_block, last_block, ("first_block", "last_block"))):
            if first > last:
                raise LeaklessInputError(cls.NAME, names[1], f"{last:g} is below {names[0]} ({first:g}).",
                                         f"set {names[1]} to at least {names[0]}.")
        if entities is None or not entities.names:
            raise LeaklessInputError(cls.NAME, "entities", "no words.", "name at least one in Leakless Heatmap "
                                     "Encode.")
        entry = patching.model_entry(cls.NAME, model, "reads text-image attention", lambda m: True)
        patching.check_prompt_family(cls.NAME, "entities", entities.family, entry, HeatmapEncode.NAME)
        results = RunResults(cls.NAME, "heatmaps")
        patch = HeatmapPatch(entities, (start_percent, end_percent), (first_block, last_block))
        patched = patching.install(cls.NAME, model, patch, WRAPPER_KEY, entry, results,
                                   patching.PromptCheck(entities.prompt, "entities", HeatmapEncode.NAME, ENCODE_FIX))
        return io.NodeOutput(patched, results)


class HeatmapShow(io.ComfyNode):
    NAME = "Leakless Heatmap Show"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessHeatmapShow",
            display_name=cls.NAME,
            category="Leakless/heatmap",
            description=("The attention heatmaps of the sampling run that made these images: one MASK per word and "
                         "image (each map divided by its max) and the images overlaid with a heat colour map. "
                         "Connect the sampler's LATENT to 'samples' to tie the maps to it."),
            inputs=[
                HEATMAPS.Input("heatmaps", tooltip="Leakless Attention Heatmap's 'heatmaps' output."),
                io.Image.Input("images", tooltip="The decoded images of that run."),
                *inputs([heatmap_patch.OPACITY]),
                io.Latent.Input("samples", optional=True, tooltip=(
                    "The sampler's LATENT output (recommended): the maps of the run that made it, even when the "
                    "sampler's result is reused. Unconnected: the one sampling with this model in this run of the "
                    "workflow.")),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="Per image, one map per word, in order (0..1)."),
                io.Image.Output("overlay", display_name="overlay",
                                tooltip="Per image, one overlay per word, in order."),
            ],
        )

    @classmethod
    def execute(cls, heatmaps, images, opacity, samples=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        record = heatmaps.find(cls.NAME, samples)
        n, ih, iw = check_images(cls.NAME, images, record, AttentionHeatmap.NAME)
        run = record.value
        maps = run.maps[torch.arange(n) % run.maps.shape[0]]  # one set per image (batches tile like conditioning)
        maps = heatmap.normalised(heatmap.on_image(maps, run.window, run.cell, record.scale, (ih, iw)))
        k = maps.shape[1]
        text = " ".join([f"Words, in order: {', '.join(run.names)} ({n} image(s) x {k} word(s)).", *record.notes])
        return io.NodeOutput(maps.reshape(n * k, ih, iw).to(images.device),
                             heatmap.overlay(images, maps, opacity).to(images.device, images.dtype),
                             ui={"text": [text]})

