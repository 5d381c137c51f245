"""nodes/driver/validation.py against an independent reference of what a declared FLOAT, INT or COMBO input
allows, on the real V3 input objects of ComfyUI's API (the objects a node's schema holds)."""

import math

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
    with pytest.raises(ValueError, match=r"'c19', \.\.\. \(25 in all\)\.$"):
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
