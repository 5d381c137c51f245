"""DeLeaker nodes (every joint-attention model of nodes/registry/models.py): DeLeaker Encode, DeLeaker (model
patch), DeLeaker Masks. The method is nodes/methods/deleaker.py and its per-run controller deleaker_patch.py; the
driver (nodes/driver/patching.py) puts it on a clone of the MODEL."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .driver import patching
from .driver.clip import encode_phrases
from .driver.results import RunResults, check_images
from .driver.schema import ENTITIES, MASKS, clip_input, encode_outputs, inputs, text_input
from .driver.validation import check_inputs
from .errors import LeaklessInputError
from .methods import deleaker, heatmap
from .methods.deleaker_patch import ENCODE_FIX, OPACITY, DeLeakerPatch
from .registry import families, models

WRAPPER_KEY = "leakless_deleaker"
PALETTE = [(0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83), (1.0, 0.34, 0.13), (0.55, 0.76, 0.29)]


class DeLeakerEncode(io.ComfyNode):
    NAME = "Leakless DeLeaker Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeakerEncode",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=(
                "Encodes a prompt (like CLIPTextEncode) and finds its entities' tokens for Leakless DeLeaker, so the "
                "entities always match the prompt the sampler sees. Mark entities in the prompt as "
                "'a **cow** and a **horse**' (the marks are removed before encoding) or list them in 'entities'."),
            inputs=[
                clip_input(f"The text encoder of a joint-attention model: {families.loaders(lambda f: f.joint)}."),
                text_input((
                    "The prompt. Entities may be marked with double asterisks: 'a **cow** and a **horse** in a "
                    "farm'. A mark is that occurrence: a second **cat** is the second 'cat'.")),
                io.String.Input("entities", default="", tooltip=(
                    "Entities, comma-separated ('cow, horse'; 'cat#2' for the second 'cat'), if not marked in the "
                    "text (marks and entities together are an error). At least two. Each must be words of the "
                    "prompt; all its tokens are used; no token may be in two entities ('cow, a cow' is an "
                    "error).")),
            ],
            outputs=encode_outputs("The entities and their token rows: connect to Leakless DeLeaker."),
        )

    @classmethod
    def execute(cls, clip, text, entities) -> io.NodeOutput:
        check_inputs(cls, locals())

        def joint_only(family):
            if not family.joint:
                raise LeaklessInputError(cls.NAME, "clip", f"DeLeaker works on {families.names(lambda f: f.joint)}; "
                                         f"this is a CLIP for {family.name}, whose model has no joint attention.",
                                         "load the CLIP of a joint-attention model (e.g. CLIPLoader type qwen_image "
                                         "or flux2, DualCLIPLoader type flux).")

        def at_least_two(refs):
            if len(refs) < 2:
                return f"{len(refs)} entit{'y' if len(refs) == 1 else 'ies'} given; DeLeaker separates at least two"
            return None

        return io.NodeOutput(*encode_phrases(cls.NAME, clip, text, entities, "entities", joint_only, at_least_two,
                                             "name two or more entities that are words of the prompt, e.g. 'cow, "
                                             "horse', or mark them as **cow**.", disjoint=True))


class DeLeaker(io.ComfyNode):
    NAME = "Leakless DeLeaker"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeaker",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=(
                f"DeLeaker ({models.names(lambda m: m.joint)}): finds where each entity is "
                "from early attention, then keeps each entity's image "
                "region from attending to the other entities' words and strongly to their image regions, and "
                "reinforces its own words. Works at inference time on a clone of the model; other attention patches "
                "keep working. Defaults are the paper's code's."),
            inputs=[
                io.Model.Input("model", tooltip=f"A joint-attention model ({models.names(lambda m: m.joint)}). "
                               "The input is not changed; a patched clone is returned."),
                *inputs(deleaker.SETTINGS),
                ENTITIES.Input("entities", optional=True, tooltip=(
                    "From Leakless DeLeaker Encode, whose conditioning must be this sampler's positive prompt. "
                    "Unconnected: the model is returned unchanged.")),
            ],
            outputs=[
                io.Model.Output("patched", display_name="model", tooltip="The patched clone."),
                MASKS.Output("masks", display_name="masks",
                             tooltip="After sampling, Leakless DeLeaker Masks shows where each entity was found."),
            ],
        )

    @classmethod
    def execute(cls, model, mask_threshold, image_threshold, alpha, mask_history, cross_text, self_text,
                image_image, alpha_per_pair, overlap, entities=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        entry = patching.model_entry(cls.NAME, model, "edits joint text-image attention")
        settings = deleaker.Settings(beta_text=mask_threshold, beta_image=image_threshold, alpha=alpha,
                                     cross_text=cross_text, self_text=self_text, image_image=image_image,
                                     alpha_per_pair=alpha_per_pair, overlap=overlap)
        if entities is None or not settings.edits_anything:
            return io.NodeOutput(model, None)
        if len(entities.names) < 2:
            raise LeaklessInputError(cls.NAME, "entities", "fewer than two entities.", "name at least two in "
                                     "Leakless DeLeaker Encode.")
        patching.check_prompt_family(cls.NAME, "entities", entities.family, entry, DeLeakerEncode.NAME)
        results = RunResults(cls.NAME, "masks")
        patched = patching.install(cls.NAME, model, DeLeakerPatch(entities, settings, mask_history), WRAPPER_KEY,
                                   entry, results, patching.PromptCheck(entities.prompt, "entities",
                                                                        DeLeakerEncode.NAME, ENCODE_FIX))
        return io.NodeOutput(patched, results)


class DeLeakerMasks(io.ComfyNode):
    NAME = "Leakless DeLeaker Masks"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessDeLeakerMasks",
            display_name=cls.NAME,
            category="Leakless/deleaker",
            description=("Where DeLeaker localized each entity in the sampling run that made these images: one MASK "
                         "per entity (and per image) and a coloured overlay on the decoded images. Connect the "
                         "sampler's LATENT to 'samples' to tie the masks to it; masks of another run are never "
                         "shown."),
            inputs=[
                MASKS.Input("masks", tooltip="Leakless DeLeaker's 'masks' output."),
                io.Image.Input("images", tooltip="The decoded images of that run (this node runs after them)."),
                *inputs([OPACITY]),
                io.Latent.Input("samples", optional=True, tooltip=(
                    "The sampler's LATENT output (recommended): the masks of the run that made it, even when the "
                    "sampler's result is reused from an earlier run. Unconnected: the one sampling with this model "
                    "in this run of the workflow.")),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="Per image, one mask per entity, in order."),
                io.Image.Output("overlay", display_name="overlay", tooltip="The images with each entity's mask "
                                "tinted in its own colour."),
            ],
        )

    @classmethod
    def execute(cls, masks, images, opacity, samples=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        if masks is None:
            raise LeaklessInputError(cls.NAME, "masks", "Leakless DeLeaker made no masks: it was off (no entities "
                                     "connected, or every edit off).", "connect DeLeaker Encode's entities to "
                                     "Leakless DeLeaker and sample with its model.")
        record = masks.find(cls.NAME, samples)
        n, ih, iw = check_images(cls.NAME, images, record, DeLeaker.NAME)
        run = record.value
        r, k, _ = run.masks.shape
        grids = run.masks.float().reshape(r, k, *run.grid)
        up = heatmap.on_image(grids, run.window, run.cell, record.scale, (ih, iw), mode="nearest")
        up = up[torch.arange(n) % r]  # one set of masks per image (batches tile like conditioning)
        overlay = images[..., :3].clone()
        for e in range(k):
            colour = torch.tensor(PALETTE[e % len(PALETTE)], dtype=overlay.dtype, device=overlay.device)
            a = (up[:, e, ..., None] * opacity).to(overlay.device, overlay.dtype)
            overlay = overlay * (1 - a) + colour * a
        summary = " ".join([run.summary() or f"Every entity was found: {', '.join(run.names)}.", *record.notes])
        return io.NodeOutput(up.reshape(n * k, ih, iw).to(images.device), overlay, ui={"text": [summary]})
