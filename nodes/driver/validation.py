"""Every input checked against the schema its node declares, and against the pack's limits, before the node does
any work.

ComfyUI's own check lets NaN through (``NaN < min`` is false), never checks linked values (a link can carry any
type), and 0.3.75 does not check V3 dropdowns. An API prompt can also type any value into a custom input (entities,
masks...), where only a node's output belongs. Pure: it reads the schema's input objects (``id``, ``io_type``,
``min``, ``max``, ``options``, ``optional``, ``default``) and never imports ComfyUI; the node modules fill
CUSTOM_TYPES (extension.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

from ..errors import QUOTED_CHARS, LeaklessInputError, cut, listed, quoted
from ..text.grammar import MARK, parts

MAX_STRING = 100_000  # characters in any text input (prompts, selections, groups)
# custom io type -> (the class its value must be, the outputs that make it: "Leakless DeLeaker Encode's 'entities'")
CUSTOM_TYPES: dict[str, tuple[type, str]] = {}


def register_custom_types(classes: dict[str, type], nodes) -> None:
    """CUSTOM_TYPES for `classes` (custom io type -> the class of its values), naming the outputs of `nodes` (node
    classes) that make each."""
    for io_type, cls in classes.items():
        makers = [f"{schema.display_name}'s '{out.display_name or out.id}'" for schema in
                  (node.define_schema() for node in nodes) for out in schema.outputs if out.io_type == io_type]
        CUSTOM_TYPES[io_type] = (cls, " or ".join(makers))


@dataclass(frozen=True)
class Limit:
    """At most `most` of what `measure` finds in a text input: (how many, the part that has them or "")."""

    most: int
    what: str  # what is counted, for the message: "subsets (lines or ';')"
    measure: Callable[[str], tuple[int, str]]
    fix: str


def _count(separators: str):
    return lambda text: (len(parts(text, separators)), "")


def _longest(separators: str):
    def measure(text):
        if text.count('"') % 2:  # an unclosed quote: the parser says so first
            return 0, ""
        longest = max(parts(text, separators), key=len, default="")
        return len(longest), longest

    return measure


def _marks(text):
    return len(MARK.findall(text)), ""


def _lines(text):
    return sum(1 for line in text.splitlines() if line.strip()), ""


def _characters(text):
    return len(text), ""


# The bounds of the pack's text inputs, by node id and input (README "Limits"). Each bounds work or memory that
# grows with it: an image of the batch, an encoder pass, a search of the prompt per phrase.
MAX_SUBSETS = 256  # Token Trace: images of one batch (trace_nodes.TokenTrace also counts 'each word' / 'each token')
MAX_PHRASE = 200  # characters in one phrase: finding it costs the prompt's length times its own
SPLIT = "split it over several runs"
PHRASE = Limit(MAX_PHRASE, "characters in one phrase", _longest(";\n,:"), "name a phrase by a few of its words.")
TOME_TEXT = Limit(2_000, "characters", _characters, "ToMe works on one CLIP chunk (75 tokens): shorten it.")
SUBSETS = Limit(MAX_SUBSETS, "subsets (lines or ';')", _count(";\n"), f"trace at most {MAX_SUBSETS} subsets in one run "
                "(each is one image of the batch): split the selection over several runs, each with its Leakless "
                "Trace Grid.")
LABELS = Limit(MAX_SUBSETS, "labels (lines)", _lines, "connect Leakless Token Trace's 'labels' (one per subset).")


def _phrases(most: int, what: str, fix: str, separators: str = ";\n,") -> Limit:
    """At most `most` phrases in an input; `{most}` in `fix` states the limit."""
    return Limit(most, what, _count(separators), fix.format(most=most))


def _entities(most: int, what: str, fix: str) -> dict[str, tuple[Limit, ...]]:
    """The limits of an encode node that takes phrases listed in input `what` or marked in its text."""
    return {what: (_phrases(most, what, fix), PHRASE),
            "text": (Limit(most, f"{what} (** marks)", _marks, fix.format(most=most)),)}


LIMITS: dict[str, dict[str, tuple[Limit, ...]]] = {
    "LeaklessTokenTrace": {"selection": (SUBSETS, _phrases(1_024, "phrases and positions", SPLIT + "."), PHRASE)},
    "LeaklessTraceGrid": {"labels": (LABELS,)},
    "LeaklessRedundantTokenMask": {"items": (
        _phrases(256, "items (lines or ';')", SPLIT + ", or leave it empty for every word.", ";\n"),
        _phrases(1_024, "phrases and tokens", SPLIT + "."), PHRASE)},
    "LeaklessLeakPatch": {"items": (_phrases(64, "items", "patch at most {most} items in one node (each is encoded "
                                             "alone): chain two Leak Patch nodes through 'conditioning'."), PHRASE)},
    "LeaklessDeLeakerEncode": _entities(16, "entities", "separate at most {most} entities (DeLeaker's cost grows with "
                                        "their pairs)."),
    "LeaklessHeatmapEncode": _entities(32, "words", "record at most {most} words in one run."),
    "LeaklessToMeEncode": {
        "groups": (_phrases(16, "groups (lines or ';')", "bind at most {most} groups (each is a gradient pass per "
                            "step).", ";\n"), _phrases(256, "phrases", "name fewer attributes.", ";\n,:"), PHRASE),
        "text": (TOME_TEXT,), "clean_prompt": (TOME_TEXT,)},
}


def check_inputs(node_cls, values: dict) -> None:
    """First line of every Leakless execute: ``check_inputs(cls, locals())`` (locals() there are its inputs)."""
    schema = node_cls.define_schema()
    check(schema.display_name, schema.inputs, values, LIMITS.get(schema.node_id))


def check(node: str, inputs, values: dict, limits: dict | None = None) -> None:
    """Raise LeaklessInputError for the first input whose value its declaration or `limits` (LIMITS of the node)
    does not allow."""
    for spec in inputs:
        value = values.get(spec.id)
        if spec.id not in values or (value is None and spec.optional):
            continue
        if spec.io_type == "FLOAT":
            _number(node, spec, value, Real, "a finite number")
        elif spec.io_type == "INT":
            _number(node, spec, value, Integral, "a whole number")
        elif spec.io_type == "COMBO":
            _option(node, spec, value)
        elif spec.io_type == "BOOLEAN" and not isinstance(value, bool):
            default = "" if spec.default is None else f" (default {str(spec.default).lower()})"
            raise LeaklessInputError(node, spec.id, f"{_shown(value)} is not true or false.",
                                     f"set it to true or false{default}.")
        elif spec.io_type == "STRING":
            _text(node, spec, value)
            for limit in (limits or {}).get(spec.id, ()):
                _limit(node, spec.id, limit, value)
        elif spec.io_type in CUSTOM_TYPES and value is not None:  # None: the producer made nothing (it was off)
            _custom(node, spec, value)


def _shown(value) -> str:
    """A value as a message repeats it: text quoted, anything else as its repr, both cut short."""
    if isinstance(value, str):
        return quoted(value)
    return cut(repr(value), QUOTED_CHARS)


def _text(node: str, spec, value) -> None:
    if not isinstance(value, str):
        raise LeaklessInputError(node, spec.id, f"{_shown(value)} ({type(value).__name__}) is not text.",
                                 "connect or type a text (STRING) value.")
    if len(value) > MAX_STRING:
        raise LeaklessInputError(node, spec.id, f"it is {len(value):,} characters; Leakless text inputs take at most "
                                 f"{MAX_STRING:,}.", "shorten it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LeaklessInputError(node, spec.id, f"it has a lone surrogate (\\u{ord(value[e.start]):04x}) at "
                                 f"character {e.start}, which is not text.", "send valid Unicode text (a surrogate "
                                 "pair, or the character itself).") from None


def _limit(node: str, input_id: str, limit: Limit, value: str) -> None:
    count, part = limit.measure(value)
    if count > limit.most:
        where = f" ({quoted(part)})" if part else ""
        raise LeaklessInputError(node, input_id, f"it has {count:,} {limit.what}{where}; it takes at most "
                                 f"{limit.most:,}.", limit.fix)


def _custom(node: str, spec, value) -> None:
    cls, makers = CUSTOM_TYPES[spec.io_type]
    if not isinstance(value, cls):
        raise LeaklessInputError(node, spec.id, f"{_shown(value)} ({type(value).__name__}) is not what {makers} "
                                 f"output{'' if ' or ' in makers else 's'}: a {spec.io_type} input takes a node's "
                                 "output, never a typed value.", f"connect {makers} output.")


def _number(node: str, spec, value, kind, what: str) -> None:
    lo, hi = spec.min, spec.max
    if isinstance(value, kind) and not isinstance(value, bool) \
            and (isinstance(value, Integral) or math.isfinite(value)) \
            and (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    span = _span(lo, hi)
    default = "" if spec.default is None else f" (default {spec.default:g})"
    raise LeaklessInputError(node, spec.id, f"{_shown(value)} is not {what}{span}.",
                             f"set it to {what}{span}{default}.")


def _span(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" of at least {lo:g}"
    return "" if hi is None else f" of at most {hi:g}"


def _option(node: str, spec, value) -> None:
    options = spec.options
    if options is None:  # options the frontend fetches (remote): nothing to check against
        return
    picked = value if getattr(spec, "multiselect", False) and isinstance(value, list) else [value]
    bad = [v for v in picked if v not in options]
    if not bad:
        return
    raise LeaklessInputError(node, spec.id, f"{_shown(bad[0])} is not one of its options.",
                             f"choose one of {listed(repr(o) for o in options)}.")
