"""Leakless Token Inspector: how the text encoders of a CLIP split a prompt, position by position."""

from comfy_api.latest import io

from .driver.clip import align_clip
from .driver.schema import clip_input, text_input
from .driver.validation import check_inputs
from .errors import LeaklessInputError
from .registry import families
from .text.alignment import MAX_CHARS, PromptAlignment

NODE_NAME = "Leakless Token Inspector"
WORD_WIDTH = 24  # the word column shows at most this many characters, so a row's size does not grow with the prompt


def format_table(alignment: PromptAlignment) -> str:
    """A plain-text table (encoder, position, token, word, weight) grouped by encoder, after a line naming the
    model family and what to know about its encoders."""
    rows = alignment.table()
    header = ("encoder", "pos", "token", "word", "weight")
    cells = [header] + [(r["encoder"], str(r["position"]), r["token"], _shorten(r["word"]),
                         "" if r["weight"] == 1.0 else f"{r['weight']:g}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    previous = None
    for c in cells:
        if previous is not None and c[0] != previous and c is not cells[1]:
            lines.append("")
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        previous = c[0]
    family = alignment.family
    notes = [f"{family.name}: {family.note}" if family.note else family.name] if family else []
    elsewhere = {encoder: key for key, encoder in family.extra_rows} if family else {}
    notes += [f"{enc.name}: rows in the conditioning's '{elsewhere[k]}'" if k in elsewhere else
              f"{enc.name}: pooled vector only (no rows)" for k, enc in alignment.encoders.items() if not enc.rows]
    return "\n".join(notes + ([""] if notes else []) + lines)


def _shorten(word: str) -> str:
    return word if len(word) <= WORD_WIDTH else word[:WORD_WIDTH - 1] + "\u2026"


class TokenInspector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeaklessTokenInspector",
            display_name=NODE_NAME,
            category="Leakless/inspect",
            description=(
                "Shows how the text encoders of a CLIP split a prompt into tokens: for every encoder (CLIP-L, "
                "CLIP-G, T5-XXL) each token's position in the encoded sequence, its vocabulary spelling, the prompt "
                "word it belongs to and its weight. Use it to see which positions other Leakless nodes will touch. "
                "Token Trace's selection takes these positions ('12', '@12'; a word that is a number: '\"1984\"'); "
                "items, entities and groups are always words."
            ),
            inputs=[
                clip_input(f"The CLIP from your loader: {families.loaders()}. Only its tokenizers are used; "
                                  "nothing is encoded."),
                text_input((
                    "The prompt, written exactly as you give it to CLIPTextEncode (weights like (cat:1.2) and "
                    "embedding:name are read the same way).")),
            ],
            outputs=[io.String.Output("table", display_name="table",
                                      tooltip="The token table as text (also shown on the node).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        check_inputs(cls, locals())
        if len(text) > MAX_CHARS:
            raise LeaklessInputError(NODE_NAME, "text", f"the prompt is {len(text)} characters; the Token Inspector "
                                     f"shows at most {MAX_CHARS}.", "inspect the prompt in parts.")
        alignment = align_clip(NODE_NAME, clip, text)
        table = format_table(alignment)
        return io.NodeOutput(table, ui={"text": [table], "leakless_tokens": [alignment.payload()]})
