"""Every default and range has one home: the declaration the node's input is built from (methods/settings.py and
the schemas). Each help page (js/docs/<NodeId>.md) states every widget input's default and every number's range as
its schema has them, and the README never states another default or range for an input it names."""

import re

import pytest
from expected import SCHEMAS

from pack import REPO

README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def schemas(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    return {node_id: nodes.NODE_CLASS_MAPPINGS[node_id].define_schema() for node_id in SCHEMAS}


def shown(value) -> str:
    from leakless.nodes.methods.settings import shown as settings_shown

    return settings_shown(value)


def widgets(schema):
    """(input id, io type, default, min, max) of every input a user sets on the node."""
    return [(i.id, i.io_type, i.default, getattr(i, "min", None), getattr(i, "max", None)) for i in schema.inputs
            if i.io_type in ("FLOAT", "INT", "BOOLEAN", "COMBO", "STRING") and i.default is not None
            and not getattr(i, "force_input", False)]


def stated_default(io_type, default) -> str:
    if io_type == "BOOLEAN":
        return f"Default: {shown(default)}"
    if io_type == "STRING" and default == "":
        return "Default: empty"
    return f"Default: `{shown(default)}`"


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_help_page_states_every_default_and_range(schemas, node_id):
    page = (REPO / "js" / "docs" / f"{node_id}.md").read_text()
    for name, io_type, default, lo, hi in widgets(schemas[node_id]):
        line = next((ln for ln in page.splitlines() if ln.startswith(f"- `{name}` ")), None)
        assert line is not None, f"{node_id}.md has no '- `{name}` — ...' line"
        assert stated_default(io_type, default) in line, f"{node_id}.md, {name}: {line}"
        if io_type in ("FLOAT", "INT") and lo is not None and hi is not None:
            assert f"Range {shown(lo)} to {shown(hi)}" in line, f"{node_id}.md, {name}: {line}"
        for other in re.findall(r"Default:? `([^`]*)`", line)[1:] + re.findall(r"Range (\S+) to (\S+?)\.?(?:\s|$)",
                                                                                 line)[1:]:
            raise AssertionError(f"{node_id}.md, {name} states a second default or range: {other}")


def test_readme_states_no_other_default_or_range(schemas):
    """The README's ways of stating a value of a named input: '`name` = 1.0', '`name` (default `x`)', '`name` ...
    default `x`' in the same clause, '(on by default)', '(default off)', '`name` from A to B'."""
    declared = {}
    for schema in schemas.values():
        for name, _io_type, default, lo, hi in widgets(schema):
            declared.setdefault(name, set()).add((shown(default), shown(lo) if lo is not None else None,
                                                  shown(hi) if hi is not None else None))
    defaults = {name: {d for d, _, _ in v} for name, v in declared.items()}
    ranges = {name: {(lo, hi) for _, lo, hi in v} for name, v in declared.items()}
    checked = 0
    for name in declared:
        quoted = re.escape(f"`{name}`")
        for m in re.finditer(quoted + r"(?: [βα]\d?)? = `?([-\w.]+)`?", README):
            checked += 1
            assert m[1] in defaults[name], f"README: {m[0]!r}, declared {defaults[name]}"
        for m in re.finditer(quoted + r"[^.;\n]{0,60}?\(?default:? `([^`]+)`", README, re.IGNORECASE):
            checked += 1
            assert m[1] in defaults[name], f"README: {m[0]!r}, declared {defaults[name]}"
        for m in re.finditer(quoted + r"[^.;\n]{0,60}?(?:default (on|off)|(on|off) by default)", README):
            checked += 1
            assert (m[1] or m[2]) in defaults[name], f"README: {m[0]!r}, declared {defaults[name]}"
        for m in re.finditer(quoted + r"[^.;\n]{0,40}? from ([-\d.]+) to ([-\d.]+)", README):
            checked += 1
            assert (m[1], m[2]) in ranges[name], f"README: {m[0]!r}, declared {ranges[name]}"
    assert checked >= 9  # the README does state defaults: the patterns still find them
