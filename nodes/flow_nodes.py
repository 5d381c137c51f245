"""Follow the Flow nodes: Token Trace, Trace Grid, Redundant Token Mask, Leak Patch (conditioning edits only)."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from .driver.clip import EMPTY_PROMPT, align_clip, check_interrupt, family_of, masked_clip
from .driver.validation import MAX_SUBSETS, check_inputs
from .errors import LeaklessInputError, input_error
from .methods import flow, redundancy
from .methods.grid import grid_size, labelled_grid, labels_for_batch
from .registry import families
from .text import grammar, provenance
from .text.alignment import ROWS, PhraseNotFoundError

MODEL_FOLDER = "leakless"
POOLED_OPTIONS = ["reference", "prompt", "empty prompt"]
POOLED_TOOLTIP = (
    "Which pooled vector goes with edited conditionings. 'reference' does what the paper's code does: FLUX keeps "
    "the full prompt's pooled CLIP-L vector; SDXL uses the empty prompt's pooled vector whenever a token is "
    "replaced; SD1.5 has no pooled input. 'prompt' / 'empty prompt' force one or the other.")
EMPTY_PROMPT_OPTIONS = ["as encoded", "attention-masked"]
EMPTY_PROMPT_TOOLTIP = (
    "How the empty prompt whose rows replace removed tokens is encoded. 'as encoded': as CLIPTextEncode encodes \"\" "
    "(the reference code's, read at tokeron/diffusers' lens branch). 'attention-masked': its padding masked out of "
    "the encoder's attention, so from the 3rd row on its rows differ (the reading of an independent check). The LLM "
    "encoders (Qwen-Image, Z-Image, FLUX.2, Krea 2) already mask their padding: there both give the same rows.")
FOLLOWED_ROWS = ("conditioning_llama3",)  # extra token rows the edits carry along (flow.following_rows)
TRACE_MODES = ["each word", "each token", "selection", "all but selection"]
SELECTION_MODES = ("selection", "all but selection")
MAX_TRACE_BYTES = 4 * 2**30  # Token Trace's batched conditioning: 256 subsets of FLUX's T5 rows at 1,024 tokens
MAX_GRID_IMAGES = 4 * MAX_SUBSETS  # Trace Grid: images (a batch of count, or up to 4 times it)
MAX_GRID_PIXELS = 2**29  # Trace Grid's output: 256 images of 1024 x 1024 with their labels fit
REDUNDANCY_MODES = ["causal rule", "manual", "classifier"]


def register_model_folder():
    """models/leakless/ holds redundancy classifiers (registered through folder_paths, ComfyUI's API for it)."""
    import folder_paths

    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def classifier_files() -> list[str]:
    import folder_paths

    try:
        files = folder_paths.get_filename_list(MODEL_FOLDER)
    except KeyError:
        files = []
    return ["none"] + [f for f in files if f.endswith(".safetensors")]


class _Encoded:
    """A prompt's alignment, its conditioning (encode()), and the empty prompt's conditioning at the same length."""

    def __init__(self, node: str, clip, text: str, empty_prompt: str = EMPTY_PROMPT_OPTIONS[0]):
        self.alignment = align_clip(node, clip, text)
        self.masked = empty_prompt == "attention-masked"
        if self.masked and masked_clip(clip) is None:
            raise LeaklessInputError(node, "empty_prompt", "this CLIP's text encoders have no attention-mask switch.",
                                     "set it to 'as encoded'.")
        self.family = family_of(node, self.alignment)
        unknown = [k for k, _ in self.family.extra_rows if k not in FOLLOWED_ROWS]
        if unknown:
            raise LeaklessInputError(node, "clip", f"{self.family.name} carries token rows outside the conditioning "
                                     f"tensor ({', '.join(unknown)}), which Follow the Flow does not edit yet, so an "
                                     "edit would be half done.", "use Leakless Token Inspector to read its tokens; "
                                     "the edits work on the other families.")
        self.node = node
        self.extra = {k: self.alignment.encoders[e] for k, e in self.family.extra_rows}  # conditioning key: tokens
        self.key = ROWS
        self.encoder = self.alignment.rows
        self._clip, self._text = clip, text

    def encode(self, conditioning=None) -> _Encoded:
        """The prompt's CONDITIONING (`self.conds`): encoded here, or `conditioning`, checked to be its encoding."""
        node, clip, text, tokens = self.node, self._clip, self._text, self.alignment.tokens
        if conditioning is None:  # tagged like every Leakless encoding: the tag is kept through its edits
            self.conds, _ = provenance.tag_conditioning(node, clip, tokens, text,
                                                        clip.encode_from_tokens_scheduled(tokens))
            if self.conds[0][0].shape[1] != self.encoder.length:
                raise LeaklessInputError(
                    node, "clip", f"ComfyUI encoded the prompt to {self.conds[0][0].shape[1]} rows where Leakless "
                    f"counts {self.encoder.length} {self.family.name} rows, so positions would be wrong.",
                    "this ComfyUI encodes the family differently from the ones Leakless is tested on: report it "
                    "with the prompt.")
        else:
            fix = ("connect this text's conditioning from this CLIP (CLIPTextEncode or a Leakless node), or leave "
                   "it unconnected.")
            for cond, _ in conditioning:
                if cond.shape[1] != self.encoder.length:
                    raise LeaklessInputError(
                        node, "conditioning", f"it has {cond.shape[1]} token rows but the text encodes to "
                        f"{self.encoder.length} {self.encoder.name} rows, so it is not this text's encoding.", fix)
            tag = provenance.prompt_tag(node, clip, tokens, text, self.encoder.length)
            provenance.check_conditioning(node, "conditioning", tag, conditioning,
                                          lambda: clip.encode_from_tokens_scheduled(tokens), fix)
            for _, meta in conditioning:
                self.extra_rows(meta, "conditioning", "it", fix)
            self.conds = conditioning
        return self

    def extra_rows(self, meta: dict, input_name: str, what: str, fix: str = "") -> dict:
        """`meta`'s extra token rows (HiDream's Llama rows), each checked to have one row per token of its encoder."""
        out = {}
        for key, tokens in self.extra.items():
            rows = meta.get(key)
            if rows is None or rows.shape[-2] != tokens.length:
                found = "none" if rows is None else f"{rows.shape[-2]} token rows"
                raise LeaklessInputError(self.node, input_name, f"{what} has {found} in '{key}' where the text has "
                                         f"{tokens.length} {tokens.name} tokens, so those rows cannot follow the "
                                         "edit.", fix or "this ComfyUI encodes the family differently from the ones "
                                         "Leakless is tested on: report it with the prompt.")
            out[key] = rows
        return out

    @property
    def empties(self):
        """The empty prompt's CONDITIONING at the prompt's token layout, one entry per prompt entry (cached)."""
        empties = EMPTY_PROMPT.get(self._clip, self.alignment.tokens, self.encoder.length, self.masked)
        return empties if len(empties) == len(self.conds) else [empties[0]] * len(self.conds)

    def pooled(self, mode: str, own: dict, empty: dict, replaced_any: bool):
        use_empty = mode == "empty prompt" or (mode == "reference" and self.family.empty_pooled_when_replaced
                                               and replaced_any)
        return (empty if use_empty else own).get("pooled_output")

    def conditioning(self, variants, pooled_mode: str, on_variant=None):
        """Batch one edited conditioning per variant (the rows it replaces with the empty prompt's; the extra rows
        follow, see flow.following_rows), for every entry of the prompt's CONDITIONING; every other key of an entry
        (guidance, hooks, masks...) is kept. ``on_variant()`` is called after each variant of each entry."""
        followed = {k: [flow.following_rows(self.encoder, tokens, replaced) for replaced in variants]
                    for k, tokens in self.extra.items()}
        out = []
        for (cond, own), (empty_cond, empty) in zip(self.conds, self.empties, strict=True):
            meta = dict(own)
            pooled = [self.pooled(pooled_mode, own, empty, bool(replaced)) for replaced in variants]
            if pooled[0] is not None:
                meta["pooled_output"] = torch.cat(pooled)
            rows, empty_rows = self.extra_rows(own, "clip", "the prompt's encoding"), self.extra_rows(
                empty, "clip", "the empty prompt's encoding")
            for key, positions in followed.items():
                meta[key] = flow.replace_rows_batch(rows[key], empty_rows[key], positions)
            out.append([flow.replace_rows_batch(cond, empty_cond, variants, on_variant), meta])
        return out

    def batch_bytes(self, variants: int) -> int:
        """The memory of `variants` edited copies of the prompt's CONDITIONING (its rows, extra rows, pooled)."""
        tensors = [t for cond, meta in self.conds for t in (cond, meta.get("pooled_output"),
                                                           *(meta.get(k) for k in self.extra)) if torch.is_tensor(t)]
        return variants * sum(t.numel() * t.element_size() for t in tensors)


def _empty_prompt_input():
    return io.Combo.Input("empty_prompt", options=EMPTY_PROMPT_OPTIONS, default=EMPTY_PROMPT_OPTIONS[0],
                          optional=True, tooltip=EMPTY_PROMPT_TOOLTIP)  # optional: API prompts saved before it run


def _pooled_input():
    return io.Combo.Input("pooled_output", options=POOLED_OPTIONS, default="reference", tooltip=POOLED_TOOLTIP)


def _clip_input():
    return io.Clip.Input("clip", tooltip=f"The CLIP that encodes the prompt: {families.loaders()}. LoRA-patched and "
                         "clip-skip CLIPs work as usual.")


def _text_input(what: str = "The prompt"):
    return io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip=(
        f"{what}, written exactly as for CLIPTextEncode; this node encodes it itself."))


# ----------------------------------------------------------------------------------------------------------


class TokenTrace(io.ComfyNode):
    NAME = "Leakless Token Trace"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessTokenTrace",
            display_name=cls.NAME,
            category="Leakless/follow the flow",
            description=(
                "Token tracing (Follow the Flow): generate from a subset of the prompt's encoded tokens. Every "
                "token outside the subset, EOS and padding included, gets the row at the same position of the "
                "encoded empty prompt. One conditioning per subset, batched: set the latent batch size to 'count' "
                "and one sampler run renders every subset. Feed the images and 'labels' to Leakless Trace Grid."),
            inputs=[
                _clip_input(),
                _text_input(),
                io.Combo.Input("mode", options=TRACE_MODES, default="each word", tooltip=(
                    "'each word': one image per word of the prompt. 'each token': one per token (see Leakless "
                    "Token Inspector). 'selection': one per line of 'selection'. 'all but selection': each line "
                    "of 'selection' removed from the full prompt.")),
                io.String.Input("selection", multiline=True, default="", tooltip=(
                    "Used by the two selection modes. One subset per line (or ';'); join parts with ','. A part is "
                    "a phrase of the prompt ('cow', 'golden gate', 'cat#2' for the 2nd cat) or token positions "
                    "('12', '5-7') as the Token Inspector numbers them: the rows of the conditioning. A word that "
                    "is a number: '\"1984\"'; '@12' is always a position.")),
                io.Boolean.Input("include_full_prompt", default=True, tooltip=(
                    "Add the untouched prompt as the first image, to compare against. On by default.")),
                _pooled_input(),
                _empty_prompt_input(),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning",
                                       tooltip="One conditioning per traced subset, batched."),
                io.String.Output("labels", display_name="labels", tooltip="One line per subset: what was kept."),
                io.Int.Output("count", display_name="count",
                              tooltip="Number of subsets: connect it to the latent's batch_size."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, mode, selection, include_full_prompt, pooled_output,
                empty_prompt=EMPTY_PROMPT_OPTIONS[0]) -> io.NodeOutput:
        check_inputs(cls, locals())  # a selection: at most MAX_SUBSETS lines
        enc = _Encoded(cls.NAME, clip, text, empty_prompt=empty_prompt)
        subsets = cls._subsets(enc, mode, selection)
        everything = list(range(enc.encoder.length))
        if include_full_prompt:
            subsets.insert(0, ("full prompt", everything))
        variants = [sorted(set(everything) - set(keep)) for _, keep in subsets]
        budget = enc.encode().batch_bytes(len(variants))
        if budget > MAX_TRACE_BYTES:
            raise LeaklessInputError(
                cls.NAME, "selection" if mode in SELECTION_MODES else "mode", f"its {len(variants)} subsets make a "
                f"conditioning batch of {_size(budget)} ({_size(budget // len(variants))} each: a copy of the prompt's "
                f"{enc.encoder.length} token rows), and Token Trace builds at most {_size(MAX_TRACE_BYTES)}.",
                "trace fewer subsets in one run (mode 'selection', split over several runs), or a shorter prompt.")

        import comfy.utils

        bar = comfy.utils.ProgressBar(len(subsets) * len(enc.conds))  # ComfyUI's progress bar, one tick per subset

        def step():
            check_interrupt()
            bar.update(1)

        out = enc.conditioning(variants, pooled_output, on_variant=step)
        labels = "\n".join(label for label, _ in subsets)
        return io.NodeOutput(out, labels, len(subsets))

    @classmethod
    def _subsets(cls, enc: _Encoded, mode: str, selection: str) -> list[tuple[str, list[int]]]:
        """(label, token rows kept) of every subset `mode` traces; at most MAX_SUBSETS, counted before any is
        made."""
        a, key = enc.alignment, enc.key
        if mode == "each word":
            items = flow.lexical_items(a, key)
            cls._check_count(mode, len(items), "word")
            return [(f"{it.label}: {grammar.token_label(a, key, it.positions)}", list(it.positions)) for it in items]
        if mode == "each token":
            tokens = [t for t in enc.encoder.tokens if not t.is_special]
            cls._check_count(mode, len(tokens), "token")
            return [(f"{t.position}: {grammar.token_label(a, key, [t.position])}", [t.position]) for t in tokens]
        subsets = []
        try:
            for refs in grammar.parse_refs(selection):  # at most MAX_SUBSETS lines (check_inputs)
                check_interrupt()
                keep = grammar.resolve_refs(a, key, refs)
                label = grammar.selection_label(a, key, refs)
                if mode == "all but selection":
                    removed = set(keep)
                    keep = [p for p in range(enc.encoder.length) if p not in removed]
                    label = f"without {label}"
                subsets.append((label, keep))
        except (PhraseNotFoundError, grammar.SelectionError) as e:
            raise input_error(cls.NAME, "selection", e, "use words of the prompt or positions shown by Leakless "
                              "Token Inspector.") from None
        if not subsets:
            raise LeaklessInputError(cls.NAME, "selection", "it is empty.", "write the phrases or token positions "
                                     "to trace, one subset per line.")
        return subsets

    @classmethod
    def _check_count(cls, mode: str, count: int, unit: str) -> None:
        if not count:
            raise LeaklessInputError(cls.NAME, "text", "the prompt has no tokens to trace.", "write a prompt.")
        if count > MAX_SUBSETS:
            raise LeaklessInputError(
                cls.NAME, "mode", f"'{mode}' makes {count:,} subsets of this prompt (one per {unit}); Token Trace "
                f"traces at most {MAX_SUBSETS} in one run, each one image of the sampler's batch.", "trace the prompt "
                f"in parts: mode 'selection' with one {unit} per line, at most {MAX_SUBSETS} lines a run, each run "
                "with its own Leakless Trace Grid.")


def _size(n: int) -> str:
    """Bytes for a message: '4.0 GiB', '19.2 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"


class TraceGrid(io.ComfyNode):
    NAME = "Leakless Trace Grid"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessTraceGrid",
            display_name=cls.NAME,
            category="Leakless/follow the flow",
            description=("Lays out the decoded images of a Leakless Token Trace run as one grid, each image labelled "
                         "with the tokens it was generated from."),
            inputs=[
                io.Image.Input("images", tooltip="The decoded batch from the sampler that used Token Trace's "
                               "conditioning."),
                io.String.Input("labels", multiline=True, default="", force_input=True, tooltip=(
                    "Token Trace's 'labels' output: one line per image. With a latent batch that is a multiple of "
                    "'count', ComfyUI repeats the whole conditioning batch, and the labels repeat the same way.")),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip="Images per row (at most the number of "
                             "images); 0 picks a near-square grid."),
                io.Int.Input("font_size", default=20, min=8, max=128, tooltip="Label text size in pixels; raise "
                             "it for large images."),
            ],
            outputs=[io.Image.Output("grid", display_name="grid", tooltip="One labelled grid image.")],
        )

    @classmethod
    def execute(cls, images, labels, columns, font_size) -> io.NodeOutput:
        check_inputs(cls, locals())  # at most MAX_SUBSETS labels
        lines = [ln for ln in (labels or "").splitlines() if ln.strip()]
        if not lines:
            raise LeaklessInputError(cls.NAME, "labels", "no labels were given.", "connect Token Trace's 'labels'.")
        n, h, w = images.shape[:3]
        if n > MAX_GRID_IMAGES:
            raise LeaklessInputError(cls.NAME, "images", f"{n:,} images; a grid takes at most {MAX_GRID_IMAGES:,}.",
                                     "set the latent batch size to Token Trace's 'count' (or a small multiple).")
        width, height = grid_size(n, h, w, columns, font_size)
        if width * height > MAX_GRID_PIXELS:
            raise LeaklessInputError(cls.NAME, "images", f"the grid of {n:,} images of {w} x {h} would be {width:,} x "
                                     f"{height:,} pixels; a grid has at most {MAX_GRID_PIXELS:,}.", "scale the "
                                     "images down (e.g. ImageScaleBy) before the grid, or lay out fewer of them.")
        try:
            expanded = labels_for_batch(lines, n)
        except ValueError as e:
            raise input_error(cls.NAME, "images", e, "set the latent batch size to Token Trace's 'count' (or a "
                              "multiple of it).") from None

        import comfy.utils

        bar = comfy.utils.ProgressBar(n)  # one tick per image laid out

        def step():
            check_interrupt()
            bar.update(1)

        return io.NodeOutput(labelled_grid(images, expanded, columns, font_size, on_image=step))


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
                _clip_input(),
                _text_input(),
                io.Combo.Input("mode", options=REDUNDANCY_MODES, default="causal rule", tooltip=(
                    "'causal rule': keep the last token of each item (the paper's finding for causal encoders, "
                    "i.e. CLIP and the LLM encoders; not for T5). 'manual': keep the tokens you name in 'items'. "
                    "'classifier': a k-NN or linear classifier file from models/leakless/.")),
                io.String.Input("items", multiline=True, default="", tooltip=(
                    "Items to consider, one per line (or ';'), e.g. 'golden gate bridge' or 'bats#2'; empty = "
                    "every word. In manual mode write 'item: tokens to keep', e.g. 'pelican: lic' or "
                    "'pelican: 2' (1-based index in the item).")),
                io.Combo.Input("classifier", options=classifier_files(), default="none", tooltip=(
                    "Classifier for 'classifier' mode, from models/leakless/. Train one on your text encoder with "
                    "'python -m leakless.nodes.redundancy_cli --help' (run from custom_nodes/).")),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Classifier mode: a token is redundant when its score is above this. Raise it to remove "
                    "fewer tokens.")),
                _pooled_input(),
                _empty_prompt_input(),
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
                empty_prompt=EMPTY_PROMPT_OPTIONS[0]) -> io.NodeOutput:
        check_inputs(cls, locals())
        enc = _Encoded(cls.NAME, clip, text, empty_prompt=empty_prompt).encode()
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
                        "train one with 'python -m leakless.nodes.redundancy_cli --help' (from ComfyUI/custom_nodes)"
                        ", put the .safetensors in models/leakless/, and select it.")
                clf = _load_classifier(cls.NAME, classifier)
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


def _load_classifier(node: str, name: str):
    import folder_paths

    try:
        return redundancy.load(folder_paths.get_full_path_or_raise(MODEL_FOLDER, name))
    except (redundancy.RedundancyError, OSError, FileNotFoundError) as e:
        raise input_error(node, "classifier", e, "select a file written by 'python -m "
                          "leakless.nodes.redundancy_cli'.") from None


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
                _clip_input(),
                _text_input("The full prompt"),
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
        enc = _Encoded(cls.NAME, clip, text).encode(conditioning)
        a = enc.alignment
        encoders = {enc.key: enc.key, **{k: tokens.key for k, tokens in enc.extra.items()}}  # where: encoder key
        try:
            refs = grammar.parse_phrases(items, "items")
            if not refs:
                raise grammar.SelectionError("no item was given")
            patches = []
            for ref in refs:  # one encoder pass each: at most 64 (check_inputs)
                check_interrupt()
                patches.append(_isolated(cls.NAME, clip, a, encoders, ref))
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
            f"{ref}: pasted " + " and ".join(f"{len(t)} {a.encoder(k).name} row(s) at {_ranges(t)}"
                                              for k, (_, t) in zip(encoders.values(), pasted.values(), strict=True))
            + " from its isolated encoding" for ref, _, pasted in patches)
        return io.NodeOutput(conds, report, ui={"text": [report]})


def _isolated(node, clip, a, encoders: dict, ref):
    """Encode an item alone (through the same template, if any) with the weights it has in the prompt; return it
    and, for each place its rows go (`encoders`: ROWS or a conditioning key -> the alignment's encoder key), its
    rows there and where they go. Byte-level BPE encoders (the LLMs) spell a word after a space differently
    ('Ġcat'), so an item that follows whitespace in the prompt is encoded with one space before it when that is
    what gives the prompt's tokens."""
    match = grammar.find_ref(a, ref)
    targets = {w: match.of(k) for w, k in encoders.items()}
    spaced = match.span[0] > 0 and a.prompt[match.span[0] - 1].isspace()
    for text in (ref.phrase, " " + ref.phrase) if spaced else (ref.phrase,):
        alone = align_clip(node, clip, text)
        sources = {w: [t.position for t in alone.encoder(k).tokens if not t.is_special] for w, k in encoders.items()}
        differing = [w for w, k in encoders.items() if [alone.encoder(k).at(p).token_id for p in sources[w]]
                     != [a.encoder(k).at(p).token_id for p in targets[w]]]
        if not differing:
            break
    else:
        where = differing[0]
        key = encoders[where]
        texts = [a.encoder(key).at(p).text for p in targets[where]]
        raise grammar.SelectionError(
            f"'{ref}' is tokenized differently alone {[alone.encoder(key).at(p).text for p in sources[where]]} than "
            f"in the prompt {texts} ({a.encoder(key).name}), so its rows cannot be matched; name the item with the "
            "characters around it as they stand in the prompt")
    tokens = dict(alone.tokens)
    for k, enc_tokens in a.encoders.items():
        if k not in tokens or k not in alone.encoders:
            continue
        prompt_pos = match.positions[k]
        alone_enc = alone.encoders[k]
        alone_pos = [t.position for t in alone_enc.tokens if not t.is_special]
        weights = {q - alone_enc.offset: enc_tokens.at(p).weight for p, q in zip(prompt_pos, alone_pos, strict=False)}
        tokens[k] = _reweighted(tokens[k], weights)
    return ref, clip.encode_from_tokens_scheduled(tokens), {w: (sources[w], targets[w]) for w in encoders}


def _reweighted(chunks, weights: dict[int, float]):
    """`chunks` with the weights of the tokens at `weights`' indices (counted over the chunks) replaced."""
    out, position = [], 0
    for chunk in chunks:
        row = []
        for entry in chunk:
            w = weights.get(position)
            row.append((entry[0], w, *entry[2:]) if w is not None else tuple(entry))
            position += 1
        out.append(row)
    return out


def _ranges(positions) -> str:
    positions = sorted(positions)
    parts, start = [], None
    for i, p in enumerate(positions):
        if start is None:
            start = p
        if i + 1 == len(positions) or positions[i + 1] != p + 1:
            parts.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ", ".join(parts)

