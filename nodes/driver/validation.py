"""Every FLOAT, INT, COMBO, BOOLEAN and STRING input checked against the schema its node declares, before the node
does any work.

ComfyUI's own check lets NaN through (``NaN < min`` is false), never checks linked values (a link can carry any
type), and 0.3.75 does not check V3 dropdowns. Pure: it reads the schema's input objects (``id``, ``io_type``,
``min``, ``max``, ``options``, ``optional``, ``default``) and never imports ComfyUI.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from ..errors import LeaklessInputError

MAX_LISTED = 20  # options named in an error (a classifier folder can hold many files)
MAX_STRING = 100_000  # characters in any text input (prompts, selections, groups)


def check_inputs(node_cls, values: dict) -> None:
    """First line of every Leakless execute: ``check_inputs(cls, locals())`` (locals() there are its inputs)."""
    schema = node_cls.define_schema()
    check(schema.display_name, schema.inputs, values)


def check(node: str, inputs, values: dict) -> None:
    """Raise LeaklessInputError for the first input whose value its declaration does not allow."""
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


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "\u2026"


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


def _number(node: str, spec, value, kind, what: str) -> None:
    lo, hi = spec.min, spec.max
    if isinstance(value, kind) and not isinstance(value, bool) \
            and (isinstance(value, Integral) or math.isfinite(value)) \
            and (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    span = _span(lo, hi)
    default = "" if spec.default is None else f" (default {spec.default:g})"
    raise LeaklessInputError(node, spec.id, f"{value!r} is not {what}{span}.",
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
    listed = ", ".join(repr(o) for o in options[:MAX_LISTED])
    if len(options) > MAX_LISTED:
        listed += f", ... ({len(options)} in all)"
    raise LeaklessInputError(node, spec.id, f"{bad[0]!r} is not one of its options.", f"choose one of {listed}.")
