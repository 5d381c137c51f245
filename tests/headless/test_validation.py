"""nodes/driver/validation.py against an independent reference of what a declared FLOAT, INT or COMBO input
allows, on the real V3 input objects of ComfyUI's API (the objects a node's schema holds)."""

import math
import sys

import pytest


@pytest.fixture(scope="module")
def v(leakless):
    import leakless.nodes.driver.validation as v

    return v


@pytest.fixture(scope="module")
def io(leakless):
    from comfy_api.latest import io

    return io


def reference_allows(kind, value, lo=None, hi=None, options=None, optional=False):
    """Written for the test: what each kind of input accepts."""
    if value is None and optional:
        return True
    if kind == "COMBO":
        return value in options
    number = (int,) if kind == "INT" else (int, float)
    if type(value) not in number or value != value or value in (math.inf, -math.inf):  # noqa: PLR0124 - NaN
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


VALUES = [0, 1, 5, -1, 6, 0.5, 1.0, -0.25, 2.5, math.nan, math.inf, -math.inf, True, False, "0.5", "a", "b", "A",
          None, 10 ** 20, 10 ** 400, 1e300]


def specs(io):
    return [
        ("FLOAT", dict(lo=0.0, hi=1.0), io.Float.Input("x", default=0.5, min=0.0, max=1.0)),
        ("FLOAT", dict(), io.Float.Input("x", default=0.0)),
        ("FLOAT", dict(lo=-0.5), io.Float.Input("x", default=0.0, min=-0.5)),
        ("FLOAT", dict(hi=1.0, optional=True), io.Float.Input("x", default=0.0, max=1.0, optional=True)),
        ("INT", dict(lo=0, hi=5), io.Int.Input("x", default=1, min=0, max=5)),
        ("INT", dict(), io.Int.Input("x", default=1)),
        ("COMBO", dict(options=["a", "b"]), io.Combo.Input("x", options=["a", "b"], default="a")),
        ("COMBO", dict(options=[1, 2]), io.Combo.Input("x", options=[1, 2], default=1)),
    ]


def test_agrees_with_the_reference(v, io):
    for kind, bounds, spec in specs(io):
        for value in VALUES:
            expected = reference_allows(kind, value, **bounds)
            try:
                v.check("Node", [spec], {"x": value})
                ok = True
            except ValueError as e:
                ok = False
                assert type(e).__name__ == "LeaklessInputError" and "Node: input 'x': " in str(e) and " Fix: " in str(e)
            assert ok == expected, (kind, bounds, value)


def test_messages_name_the_range_and_the_options(v, io):
    alpha = io.Float.Input("alpha", default=1.2, min=1.0, max=3.0)
    with pytest.raises(ValueError) as e:
        v.check("Leakless DeLeaker", [alpha], {"alpha": math.nan})
    assert str(e.value) == ("Leakless DeLeaker: input 'alpha': nan is not a finite number from 1 to 3. Fix: set it "
                            "to a finite number from 1 to 3 (default 1.2).")
    mode = io.Combo.Input("mode", options=["each word", "selection"], default="each word")
    with pytest.raises(ValueError) as e:
        v.check("Leakless Token Trace", [mode], {"mode": "each wrd"})
    assert str(e.value) == ("Leakless Token Trace: input 'mode': 'each wrd' is not one of its options. Fix: choose "
                            "one of 'each word', 'selection'.")
    many = io.Combo.Input("classifier", options=[f"c{i}" for i in range(25)], default="c0")
    with pytest.raises(ValueError, match=r"'c19' and 5 more\.$"):
        v.check("N", [many], {"classifier": "zzz"})


def test_multiselect_checks_every_value(v, io):
    spec = io.MultiCombo.Input("tags", options=["a", "b", "c"])
    v.check("N", [spec], {"tags": ["a", "c"]})
    with pytest.raises(ValueError, match="'d' is not one of its options"):
        v.check("N", [spec], {"tags": ["a", "d"]})


def test_other_inputs_and_absent_values_are_left_alone(v, io):
    inputs = [io.Model.Input("model"), io.String.Input("text"), io.Boolean.Input("on"),
              io.Float.Input("x", min=0.0, max=1.0), io.Combo.Input("remote", options=None),
              io.String.Input("note", optional=True)]
    v.check("N", inputs, {"model": object(), "remote": "anything", "note": None, "cls": None})


@pytest.mark.parametrize("value,ok", [(True, True), (False, True), (1, False), (0, False), ("false", False),
                                      ("true", False), (None, False), (math.nan, False), ([True], False)])
def test_booleans_are_true_or_false(v, io, value, ok):
    """A link (or a client calling execute) can carry anything: only a real bool is a BOOLEAN."""
    spec = io.Boolean.Input("include_full_prompt", default=True)
    if ok:
        v.check("N", [spec], {"include_full_prompt": value})
        return
    with pytest.raises(ValueError) as e:
        v.check("N", [spec], {"include_full_prompt": value})
    message = str(e.value)
    assert message.startswith("N: input 'include_full_prompt': ") and "true or false (default true)" in message


@pytest.mark.parametrize("value,message", [
    ("a cat", None), ("", None), ("\U0001f431" * 1000, None), ("x" * 100_000, None),
    ("x" * 100_001, "it is 100,001 characters; Leakless text inputs take at most 100,000"),
    ("a \ud800 cat", r"lone surrogate \(\\ud800\) at character 2"), ("\udfff", "lone surrogate"),
    (None, r"None \(NoneType\) is not text"), (12, r"12 \(int\) is not text"), (math.nan, "is not text"),
    (["a", "b"], "is not text"), (b"a cat", r"\(bytes\) is not text"), ("x" * 1000 + "\ud800", "at character 1000"),
])
def test_strings_are_text_of_bounded_length(v, io, value, message):
    spec = io.String.Input("text", multiline=True, default="")
    if message is None:
        v.check("N", [spec], {"text": value})
        return
    with pytest.raises(ValueError, match=message) as e:
        v.check("N", [spec], {"text": value})
    assert type(e.value).__name__ == "LeaklessInputError" and str(e.value).startswith("N: input 'text': ")
    assert " Fix: " in str(e.value) and len(str(e.value)) < 400  # never the whole value


def test_every_nodes_defaults_pass(v, comfy_nodes):
    nodes, _ = comfy_nodes
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if node_id.startswith("Leakless"):
            schema = cls.GET_SCHEMA()
            v.check(schema.display_name, schema.inputs, {s.id: s.default for s in schema.inputs
                                                         if getattr(s, "default", None) is not None})


def test_quoted_caps_what_an_error_repeats(leakless):
    from leakless.nodes.errors import LeaklessInputError, listed, quoted

    assert quoted("a cat") == "'a cat'"
    assert quoted("x" * 60) == "'" + "x" * 60 + "'"
    assert quoted("x" * 10_000) == "'" + "x" * 59 + "\u2026' (10,000 characters)"
    assert listed([f"'w{i}'" for i in range(3)]) == "'w0', 'w1', 'w2'"
    assert listed([f"'w{i}'" for i in range(5000)]) == ", ".join(f"'w{i}'" for i in range(20)) + " and 4,980 more"
    message = str(LeaklessInputError("N", "text", "a problem " + "y" * 10_000, "do this."))
    assert len(message) < 2_000 and message.endswith(" Fix: do this.")  # the last resort for an uncapped echo


def test_an_unknown_option_is_quoted_short(v, io):
    mode = io.Combo.Input("mode", options=["each word", "selection"], default="each word")
    with pytest.raises(ValueError) as e:
        v.check("N", [mode], {"mode": "m" * 10_000})
    assert "(10,000 characters)" in str(e.value) and "m" * 100 not in str(e.value)


TRACE, GRID, PATCH, ENCODE, TOME = ("LeaklessTokenTrace", "LeaklessTraceGrid", "LeaklessLeakPatch",
                                    "LeaklessDeLeakerEncode", "LeaklessToMeEncode")


@pytest.mark.parametrize("node_id,input_id,value,message", [
    (TRACE, "selection", "\n".join(["cat"] * 256), None),
    (TRACE, "selection", "\n".join(["cat"] * 257), r"it has 257 subsets \(lines or ';'\); it takes at most 256"),
    (TRACE, "selection", "; ".join(["cat"] * 257), "257 subsets"),
    (TRACE, "selection", "cat\n\n ; \n" * 300, "300 subsets"),  # blank lines are not subsets
    (TRACE, "selection", '"a;b"\n' * 256, None),  # separators inside quotes separate nothing
    (TRACE, "selection", ", ".join(["cat"] * 1025), "1,025 phrases and positions; it takes at most 1,024"),
    (TRACE, "selection", "x" * 200, None),
    (TRACE, "selection", "x" * 201, r"201 characters in one phrase \('x{59}\u2026' \(201 characters\)\)"),
    (TRACE, "selection", '"' + "x" * 10_000, None),  # unclosed: the parser says so, quoting it short
    (PATCH, "items", "\n".join(["cat"] * 65), "65 items; it takes at most 64"),
    (PATCH, "items", ", ".join(["cat"] * 64), None),
    (ENCODE, "entities", ", ".join(["cow"] * 17), "17 entities; it takes at most 16"),
    (ENCODE, "text", "a **cow** " * 17, r"17 entities \(\*\* marks\); it takes at most 16"),
    (ENCODE, "text", "a **cow** " * 16, None),
    (TOME, "groups", "cat: red\n" * 17, "17 groups"),
    (TOME, "text", "cat " * 500, None),
    (TOME, "text", "cat " * 501, "2,004 characters; it takes at most 2,000"),
    (GRID, "labels", "a\n" * 257, r"257 labels \(lines\)"),
])
def test_count_limits(v, comfy_nodes, node_id, input_id, value, message):
    """The declared limits of the text inputs, on the nodes' real schemas."""
    nodes, _ = comfy_nodes
    schema = nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
    spec = next(s for s in schema.inputs if s.id == input_id)
    if message is None:
        v.check(schema.display_name, [spec], {input_id: value}, v.LIMITS[node_id])
        return
    with pytest.raises(ValueError, match=message) as e:
        v.check(schema.display_name, [spec], {input_id: value}, v.LIMITS[node_id])
    assert str(e.value).startswith(f"{schema.display_name}: input '{input_id}': ") and " Fix: " in str(e.value)


def test_every_limit_names_an_input_of_its_node(v, comfy_nodes):
    nodes, _ = comfy_nodes
    for node_id, limits in v.LIMITS.items():
        ids = {s.id for s in nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA().inputs}
        assert set(limits) <= ids, node_id


class Spec:  # stands for a custom output's class (EntitySpec, BindingSpec...)
    pass


@pytest.mark.parametrize("value", ["cow, horse", 5, 1.5, ["a", "b"], {"names": ["cow"]}, object()])
def test_custom_inputs_must_be_their_producers_output(v, io, monkeypatch, value):
    monkeypatch.setitem(v.CUSTOM_TYPES, "LEAKLESS_TEST", (Spec, "Leakless Test Encode's 'spec'"))
    spec = io.Custom("LEAKLESS_TEST").Input("spec")
    v.check("N", [spec], {"spec": Spec()})
    v.check("N", [io.Custom("LEAKLESS_TEST").Input("spec", optional=True)], {"spec": None})
    with pytest.raises(ValueError) as e:
        v.check("N", [spec], {"spec": value})
    message = str(e.value)
    assert message.startswith("N: input 'spec': ") and f"({type(value).__name__})" in message
    assert "Fix: connect Leakless Test Encode's 'spec' output" in message


def test_every_custom_type_is_registered(v, comfy_nodes):
    """Each custom io type a Leakless node takes has the class its producing node outputs."""
    nodes, _ = comfy_nodes
    taken = {s.io_type for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items() if node_id.startswith("Leakless")
             for s in cls.GET_SCHEMA().inputs if s.io_type.startswith("LEAKLESS_")}
    assert taken == {"LEAKLESS_ENTITIES", "LEAKLESS_TOME_BINDING", "LEAKLESS_DELEAKER_MASKS", "LEAKLESS_HEATMAPS"}
    pack = nodes.NODE_CLASS_MAPPINGS["LeaklessDeLeaker"].__module__.rsplit(".", 1)[0]
    loaded = sys.modules[pack + ".driver.validation"]
    assert set(loaded.CUSTOM_TYPES) == taken
    assert loaded.CUSTOM_TYPES["LEAKLESS_ENTITIES"][1] == ("Leakless DeLeaker Encode's 'entities' or Leakless "
                                                          "Heatmap Encode's 'entities'")
