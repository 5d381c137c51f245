"""Token tracing nodes (Follow the Flow): Token Trace (a batched conditioning, one per traced subset of the
prompt's tokens) and Trace Grid (the decoded batch laid out with its labels)."""

from __future__ import annotations

from comfy_api.latest import io

from .driver.clip import check_interrupt, progress
from .driver.prompts import EncodedPrompt
from .driver.schema import clip_input, inputs, text_input
from .driver.validation import MAX_SUBSETS, check_inputs
from .errors import LeaklessInputError, input_error, size
from .methods import flow
from .methods.grid import COLUMNS, FONT_SIZE, grid_size, labelled_grid, labels_for_batch
from .text import grammar
from .text.alignment import PhraseNotFoundError

SELECTION_MODES = flow.TRACE_MODES[2:]  # the modes that read 'selection'
MAX_TRACE_BYTES = 4 * 2**30  # Token Trace's batched conditioning: 256 subsets of FLUX's T5 rows at 1,024 tokens
MAX_GRID_IMAGES = 4 * MAX_SUBSETS  # Trace Grid: images (a batch of count, or up to 4 times it)
MAX_GRID_PIXELS = 2**29  # Trace Grid's output: 256 images of 1024 x 1024 with their labels fit


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
                clip_input(),
                text_input(),
                *inputs([flow.TRACE_MODE]),
                io.String.Input("selection", multiline=True, default="", tooltip=(
                    "Used by the two selection modes. One subset per line (or ';'); join parts with ','. A part is "
                    "a phrase of the prompt ('cow', 'golden gate', 'cat#2' for the 2nd cat) or token positions "
                    "('12', '5-7') as the Token Inspector numbers them: the rows of the conditioning. A word that "
                    "is a number: '\"1984\"'; '@12' is always a position.")),
                *inputs([flow.INCLUDE_FULL_PROMPT, flow.POOLED_OUTPUT, flow.EMPTY_PROMPT_ENCODING]),
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
                empty_prompt=flow.EMPTY_PROMPT_ENCODING.default) -> io.NodeOutput:
        check_inputs(cls, locals())  # a selection: at most MAX_SUBSETS lines
        enc = EncodedPrompt(cls.NAME, clip, text, empty_prompt=empty_prompt)
        subsets = cls._subsets(enc, mode, selection)
        everything = list(range(enc.encoder.length))
        if include_full_prompt:
            subsets.insert(0, ("full prompt", everything))
        variants = [sorted(set(everything) - set(keep)) for _, keep in subsets]
        budget = enc.encode().batch_bytes(len(variants))
        if budget > MAX_TRACE_BYTES:
            raise LeaklessInputError(
                cls.NAME, "selection" if mode in SELECTION_MODES else "mode", f"its {len(variants)} subsets make a "
                f"conditioning batch of {size(budget)} ({size(budget // len(variants))} each: a copy of the prompt's "
                f"{enc.encoder.length} token rows), and Token Trace builds at most {size(MAX_TRACE_BYTES)}.",
                "trace fewer subsets in one run (mode 'selection', split over several runs), or a shorter prompt.")

        step = progress(len(subsets) * len(enc.conds))  # one tick per subset
        out = enc.conditioning(variants, pooled_output, on_variant=step)
        labels = "\n".join(label for label, _ in subsets)
        return io.NodeOutput(out, labels, len(subsets))

    @classmethod
    def _subsets(cls, enc: EncodedPrompt, mode: str, selection: str) -> list[tuple[str, list[int]]]:
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
                *inputs([COLUMNS, FONT_SIZE]),
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

        return io.NodeOutput(labelled_grid(images, expanded, columns, font_size, on_image=progress(n)))
