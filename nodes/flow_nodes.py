"""Follow the Flow's conditioning edits: Redundant Token Mask and Leak Patch."""

from __future__ import annotations

from comfy_api.latest import io

from .driver.clip import check_interrupt
from .driver.prompts import TRAIN_HINT, EncodedPrompt, classifier_files, encode_alone, load_classifier
from .driver.schema import clip_input, inputs, text_input
from .driver.validation import check_inputs
from .errors import LeaklessInputError, input_error
from .methods import flow, redundancy
from .text import grammar
from .text.alignment import PhraseNotFoundError


class RedundantTokenMask(io.ComfyNode):
    NAME = "Leakless Redundant Token Mask"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessRedundantTokenMask",
            display_name=cls.NAME,
            category="Leakless/follow the flow",
            description=(
                "Redundant-token masking (Follow the Flow): in multi-token items, the tokens that carry nothing get "
                "the empty prompt's rows at their positions; the representative tokens, single-token items, EOS "
                "and padding keep theirs. The paper reports 21% fewer generation errors with it."),
            inputs=[
                clip_input(),
                text_input(),
                *inputs([redundancy.MODE]),
                io.String.Input("items", multiline=True, default="", tooltip=(
                    "Items to consider, one per line (or ';'), e.g. 'golden gate bridge' or 'bats#2'; empty = "
                    "every word. In manual mode write 'item: tokens to keep', e.g. 'pelican: lic' or "
                    "'pelican: 2' (1-based index in the item).")),
                io.Combo.Input("classifier", options=classifier_files(), default="none", tooltip=(
                    "Classifier for 'classifier' mode, from models/leakless/. Train one on your text encoder with "
                    f"'{TRAIN_HINT} --help' (run from custom_nodes/).")),
                *inputs([redundancy.THRESHOLD, flow.POOLED_OUTPUT, flow.EMPTY_PROMPT_ENCODING]),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning",
                                       tooltip="The prompt's conditioning with redundant tokens "
                                       "replaced."),
                io.String.Output("report", display_name="report", tooltip="What was kept and removed, item by item."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, mode, items, classifier, threshold, pooled_output,
                empty_prompt=flow.EMPTY_PROMPT_ENCODING.default) -> io.NodeOutput:
        check_inputs(cls, locals())
        enc = EncodedPrompt(cls.NAME, clip, text, empty_prompt=empty_prompt).encode()
        a, key, rows = enc.alignment, enc.key, enc.encoder
        try:
            if mode == "manual":
                spec = grammar.parse_manual(items)
                if not spec:
                    raise redundancy.RedundancyError("manual mode needs 'item: tokens to keep' entries")
                decisions = []
                for phrase, keeps in spec:
                    check_interrupt()
                    found = flow.named_items(a, key, phrase)
                    if len(found) != 1:
                        raise redundancy.RedundancyError(f"'{phrase}' names {len(found)} items; give one per entry")
                    item = found[0]
                    decisions.append(redundancy.manual_rule(item, keeps, [rows.at(p).text for p in item.positions]))
            elif mode == "causal rule":
                if not enc.family.causal:
                    raise LeaklessInputError(cls.NAME, "mode", "the causal rule (keep each item's last token) holds "
                                             f"for causal encoders (CLIP, LLMs); {enc.family.name} conditions on "
                                             f"{enc.encoder.name}, which is bidirectional.",
                                             f"use 'manual' or 'classifier' mode for {enc.family.name}.")
                decisions = redundancy.causal_rule(flow.named_items(a, key, items))
            else:
                if classifier == "none":
                    raise LeaklessInputError(
                        cls.NAME, "classifier", "classifier mode needs a classifier file and none is selected.",
                        f"train one with '{TRAIN_HINT} --help' (from ComfyUI/custom_nodes), put the .safetensors in "
                        "models/leakless/, and select it.")
                clf = load_classifier(cls.NAME, classifier)
                features = enc.conds[0][0][0]
                decisions = clf.decide(flow.named_items(a, key, items), features, threshold)
        except redundancy.ClassifierMismatchError as e:
            raise input_error(cls.NAME, "classifier", e, "select a classifier trained on this text encoder.") from None
        except (PhraseNotFoundError, grammar.SelectionError, redundancy.RedundancyError) as e:
            raise input_error(cls.NAME, "items", e, "use words of the prompt (see Leakless Token Inspector for "
                              "their tokens).") from None
        remove = sorted({p for d in decisions for p in d.remove})
        cond = enc.conditioning([remove], pooled_output)
        report = _report(a, key, decisions)
        return io.NodeOutput(cond, report, ui={"text": [report]})


def _report(a, key, decisions) -> str:
    rows = a.encoder(key)
    lines = []
    for d in decisions:
        if not d.remove:
            continue
        kept = ", ".join(repr(rows.at(p).text) for p in d.keep)
        removed = ", ".join(repr(rows.at(p).text) for p in d.remove)
        lines.append(f"{d.item.label}: kept {kept}; removed {removed}" + (f" ({d.note})" if d.note else ""))
    return "\n".join(lines) or "nothing removed (no multi-token item had a redundant token)"


class LeakPatch(io.ComfyNode):
    NAME = "Leakless Leak Patch"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessLeakPatch",
            display_name=cls.NAME,
            category="Leakless/follow the flow",
            description=(
                "Leak patching (Follow the Flow): each item is encoded alone and its token rows replace the item's "
                "rows in the prompt's encoding, so context can no longer leak into it ('bats' next to 'baseball' "
                "stays an animal). The paper reports leakage falling from 79% to 20% on FLUX-dev."),
            inputs=[
                clip_input(),
                text_input("The full prompt, written exactly as for CLIPTextEncode; this node encodes it "
                                  "itself."),
                io.String.Input("items", multiline=True, default="", tooltip=(
                    "Items to patch, one per line (or ';'), each as it appears in the prompt, with its modifiers "
                    "if they belong to it ('standing zebra'); 'bats#2' picks the 2nd occurrence.")),
                io.Conditioning.Input("conditioning", optional=True, tooltip=(
                    "Optional: patch this conditioning (it must be the encoding of 'text' with this CLIP, e.g. "
                    "from Redundant Token Mask) instead of encoding 'text' here. Its other settings (guidance, "
                    "areas, masks) are kept.")),
            ],
            outputs=[
                io.Conditioning.Output("patched", display_name="conditioning",
                                       tooltip="The prompt's conditioning with the items patched."),
                io.String.Output("report", display_name="report", tooltip="Which rows were patched, item by item."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, items, conditioning=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        enc = EncodedPrompt(cls.NAME, clip, text).encode(conditioning)
        a = enc.alignment
        encoders = {enc.key: enc.key, **{k: tokens.key for k, tokens in enc.extra.items()}}  # where: encoder key
        try:
            refs = grammar.parse_phrases(items, "items")
            if not refs:
                raise grammar.SelectionError("no item was given")
            patches = []
            for ref in refs:  # one encoder pass each: at most 64 (check_inputs)
                check_interrupt()
                patches.append(encode_alone(cls.NAME, clip, a, encoders, ref))
        except (PhraseNotFoundError, grammar.SelectionError) as e:
            raise input_error(cls.NAME, "items", e, "name words of the prompt, one item per line.") from None
        conds = []
        for i, (cond, own) in enumerate(enc.conds):
            meta, rows = dict(own), {enc.key: cond, **enc.extra_rows(own, "clip" if conditioning is None else
                                                                     "conditioning", "it")}
            for _ref, iso_conds, pasted in patches:
                iso, iso_meta = iso_conds[min(i, len(iso_conds) - 1)]
                iso_rows = {enc.key: iso, **{k: iso_meta[k] for k in enc.extra}}  # its own length: rows by position
                rows = {w: flow.paste_rows(r, iso_rows[w], *pasted[w]) for w, r in rows.items()}
            meta.update({w: r for w, r in rows.items() if w != enc.key})
            conds.append([rows[enc.key], meta])
        report = "\n".join(
            f"{ref}: pasted " + " and ".join(f"{len(t)} {a.encoder(k).name} row(s) at {grammar.ranges(t)}"
                                              for k, (_, t) in zip(encoders.values(), pasted.values(), strict=True))
            + " from its isolated encoding" for ref, _, pasted in patches)
        return io.NodeOutput(conds, report, ui={"text": [report]})
