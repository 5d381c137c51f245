"""ToMe semantic binding nodes (SDXL): ToMe Encode (composite tokens, end-token substitution) and ToMe Semantic
Binding (the entropy and semantic-binding updates during the first steps of sampling).

Not ComfyUI's TomePatchModel, which merges image tokens for speed: this is Hu et al.'s token merging of *prompt*
tokens for attribute binding. The method is nodes/methods/tome.py, its per-run controller tome_patch.py; the driver
(nodes/driver/patching.py) wraps each model call of a clone of the MODEL with it.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .driver import patching
from .driver.clip import align_clip, family_of
from .driver.schema import BINDING, clip_input, inputs, text_input
from .driver.validation import check_inputs
from .errors import LeaklessInputError, input_error
from .methods import tome, tome_patch
from .methods.tome_patch import LATENT_OPTIONS, THRESHOLD_OPTIONS, BindingSpec, Settings, ToMePatch
from .registry.families import names
from .text import grammar, provenance
from .text.alignment import PhraseNotFoundError

WRAPPER_KEY = "leakless_tome"


class ToMeEncode(io.ComfyNode):
    NAME = "Leakless ToMe Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessToMeEncode",
            display_name=cls.NAME,
            category="Leakless/tome",
            description=(
                "ToMe token merging for attribute binding (SDXL; SD1.5 merge only): encodes the prompt like "
                "CLIPTextEncode, then folds each group's attribute tokens into its noun ('cat: wearing sunglasses' "
                "-> one composite 'cat' token), so the dog does not get the cat's sunglasses. Optionally replaces "
                "the end tokens by those of a clean prompt. Not ComfyUI's TomePatchModel (a speed method)."),
            inputs=[
                clip_input("The SDXL CLIP (from the checkpoint). SD1.5 works for the merge."),
                text_input((
                    "The prompt, one CLIP chunk (up to 75 tokens): 'a cat wearing sunglasses and a dog wearing a "
                    "hat'.")),
                io.String.Input("groups", multiline=True, default="", tooltip=(
                    "One group per line or ';': 'noun: attribute, attribute', each a phrase of the prompt "
                    "('cat: wearing sunglasses; dog: wearing a hat'); 'cat#2' for the second 'cat', '\"1984\"' for "
                    "a word that is a number. A repeated attribute without '#n' is the occurrence nearest its noun "
                    "(before it on a tie), never past another group's noun. Empty: the plain encoding, unchanged.")),
                *inputs([tome.NOUN_WEIGHT, tome.ATTRIBUTE_WEIGHT, tome.END_TOKEN_SUBSTITUTION]),
                io.String.Input("clean_prompt", default="", tooltip=(
                    "The prompt without attributes for end-token substitution. Empty: built from the groups' "
                    "nouns ('a cat and a dog').")),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning",
                                       tooltip="The merged conditioning: the sampler's positive prompt."),
                BINDING.Output("binding", display_name="binding", tooltip=(
                    "The groups and encodings for Leakless ToMe Semantic Binding (optional: the conditioning "
                    "alone is ToMe's merge + end-token substitution).")),
            ],
        )

    @classmethod
    def execute(cls, clip, text, groups, noun_weight, attribute_weight, end_token_substitution,
                clean_prompt) -> io.NodeOutput:
        check_inputs(cls, locals())
        alignment = align_clip(cls.NAME, clip, text)
        family = family_of(cls.NAME, alignment)
        if not family.tome:
            raise LeaklessInputError(cls.NAME, "clip", f"ToMe merges CLIP token rows of {names(lambda f: f.tome)}; "
                                     f"this is a CLIP for {family.name} ({alignment.rows.name}).", "use an SDXL "
                                     "checkpoint's CLIP; for leakage on other models use Leakless Leak Patch or "
                                     "DeLeaker.")
        family = family.id
        tokens = alignment.tokens
        conditioning, tag = provenance.tag_conditioning(cls.NAME, clip, tokens, text,
                                                        clip.encode_from_tokens_scheduled(tokens))
        try:
            specs = grammar.parse_groups(groups)
            if not specs:
                return io.NodeOutput(conditioning, None)
            resolved = tuple(tome.resolve_groups(alignment, "l", specs))
        except (PhraseNotFoundError, grammar.SelectionError) as e:
            raise input_error(cls.NAME, "groups", e, "write 'noun: attribute, attribute' with words of the prompt, "
                              "one group per line, e.g. 'cat: wearing sunglasses; dog: wearing a hat'.") from None
        encoder = alignment.encoders["l"]
        if len(encoder.chunk_lengths) > 1:
            raise LeaklessInputError(cls.NAME, "text", f"the prompt is {encoder.length // 77} CLIP chunks; ToMe "
                                     "works on one (up to 75 tokens), as the reference does.", "shorten the prompt.")
        eot = next(t.position for t in encoder.tokens if t.kind == "eos")
        merged = [[tome.merge_tokens(c, resolved, noun_weight, attribute_weight), dict(m)] for c, m in conditioning]
        substituted = None
        if end_token_substitution < 1.0:
            clean = clean_prompt.strip() or tome.clean_prompt(resolved)
            clean_cond = clip.encode_from_tokens_scheduled(clip.tokenize(clean))[0][0]
            if clean_cond.shape[1] != merged[0][0].shape[1]:
                raise LeaklessInputError(cls.NAME, "clean_prompt", "the clean prompt is longer than one CLIP "
                                         "chunk.", "shorten it.")
            substituted = [[tome.substitute_end_tokens(c, clean_cond, eot), dict(m)] for c, m in merged]
        if substituted is None:
            out = merged
        elif end_token_substitution <= 0.0:
            out = substituted
        else:  # ComfyUI switches from one to the other at that point of the schedule
            out = [[c, {**m, "end_percent": end_token_substitution}] for c, m in merged] + \
                  [[c, {**m, "start_percent": end_token_substitution}] for c, m in substituted]
        anchors = torch.cat([clip.encode_from_tokens_scheduled(clip.tokenize(g.anchor))[0][0] for g in resolved])
        spec = BindingSpec(resolved, merged[0][0], None if substituted is None else substituted[0][0],
                           end_token_substitution, eot, anchors, family, tag)
        return io.NodeOutput(out, spec)


class ToMeSemanticBinding(io.ComfyNode):
    NAME = "Leakless ToMe Semantic Binding"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessToMeSemanticBinding",
            display_name=cls.NAME,
            category="Leakless/tome",
            description=(
                "ToMe's inference-time updates (SDXL): during the first steps, makes each composite token's "
                "cross-attention map compact (entropy loss: updates the latent and the prompt rows) and each "
                "composite token mean what its phrase means (semantic binding loss). Needs gradients, so it is "
                "several times slower than plain sampling in its window; see the fast settings in the README."),
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model. The input is not changed; a patched clone is "
                               "returned."),
                BINDING.Input("binding", tooltip=(
                    "From Leakless ToMe Encode, whose conditioning must be this sampler's positive prompt.")),
                *inputs(tome_patch.SETTINGS),
            ],
            outputs=[io.Model.Output("patched", display_name="model", tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, binding, steps_fraction, entropy_iterations, semantic_iterations, semantic_lr,
                entropy_step, pose_prior, semantic_latent=LATENT_OPTIONS[0],
                threshold_schedule=THRESHOLD_OPTIONS[0]) -> io.NodeOutput:
        check_inputs(cls, locals())
        entry = patching.model_entry(cls.NAME, model, "reads SDXL's cross-attention (output block 1)",
                                     lambda m: m.id == "sdxl", "FLUX leakage: use Leakless DeLeaker. SD1.5: ToMe "
                                     "Encode's merge works alone.")
        settings = Settings(steps_fraction, entropy_iterations, semantic_iterations, semantic_lr, entropy_step,
                            pose_prior, semantic_latent == LATENT_OPTIONS[1],
                            threshold_by_fraction=threshold_schedule == THRESHOLD_OPTIONS[1])
        if binding is None or not settings.updates_anything:
            return io.NodeOutput(model)
        if binding.family != "sdxl":
            raise LeaklessInputError(cls.NAME, "binding", f"the binding comes from a {binding.family} CLIP.",
                                     "encode the prompt with the SDXL checkpoint's CLIP.")
        if pose_prior and len(binding.groups) != 2:
            raise LeaklessInputError(cls.NAME, "pose_prior", f"the pose prior places two subjects; there are "
                                     f"{len(binding.groups)} groups.", "turn it off or use two groups.")
        # it updates every positive row: all of them must be ToMe Encode's
        prompt = patching.PromptCheck(binding.prompt, "binding", ToMeEncode.NAME, "connect Leakless ToMe Encode's "
                                      "conditioning as the positive prompt of the sampler that uses this model, "
                                      "without other prompts combined.", every_entry=True)
        return io.NodeOutput(patching.install(cls.NAME, model, ToMePatch(binding, settings), WRAPPER_KEY, entry,
                                              prompt=prompt))
