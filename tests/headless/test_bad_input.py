"""Bad input, data-driven: every FLOAT, INT and COMBO input of every Leakless node (the table is generated from the
node's own schema, tests/workflows/bad_inputs.py) is refused with the node, the input and the fix, before the node
does any work: called directly, and through ComfyUI's validation and executor in a real graph."""

import json
import math

import comfy_env
import pytest
from expected import SCHEMAS
from workflows import bad_inputs

# 17 FLOAT inputs x 5 + 4 INT x 2 + 10 COMBO x 2: counted so that a node or input that drops out of the table shows
EXPECTED_CASES = 113


def schema_of(nodes, node_id):
    return nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()


def run_message(graph) -> str | None:
    """None if the graph ran; else the refusal: ComfyUI's validation error or the executing node's exception."""
    try:
        comfy_env.run_prompt(graph)
    except comfy_env.ExecutionFailed as e:
        detail = e.args[0]
        return detail.get("exception_message", str(detail)) if isinstance(detail, dict) else str(detail)
    return None


def test_the_table_covers_every_node(comfy_nodes):
    nodes, _ = comfy_nodes
    counts = {n: len(bad_inputs.cases(schema_of(nodes, n))) for n in SCHEMAS}
    assert sum(counts.values()) == EXPECTED_CASES, counts
    checked = {n for n in SCHEMAS if any(s.io_type in ("FLOAT", "INT", "COMBO") for s in schema_of(nodes, n).inputs)}
    assert {n for n, c in counts.items() if c} == checked


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_refused_before_any_work_when_called_directly(comfy_nodes, node_id):
    """Every link input is None (a linked STRING is ""): a node that did any work before its check would fail some
    other way."""
    nodes, _ = comfy_nodes
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    schema = schema_of(nodes, node_id)
    base = {s.id: bad_inputs.widget_defaults(schema).get(s.id, "" if s.io_type == "STRING" else None)
            for s in schema.inputs}
    wrong = []
    for input_id, value in bad_inputs.cases(schema):
        try:
            cls.execute(**{**base, input_id: value})
            wrong.append((input_id, value, "ran"))
        except ValueError as e:
            missing = [p for p in bad_inputs.our_message(schema, input_id) if p not in str(e)]
            if type(e).__name__ != "LeaklessInputError" or missing:
                wrong.append((input_id, value, str(e), missing))
        except Exception as e:  # noqa: BLE001 - any other exception means the node did work first
            wrong.append((input_id, value, repr(e)))
    assert not wrong


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_refused_through_the_executor(comfy_nodes, node_id):
    """As a real API client sends them: NaN passes ComfyUI's checks, so it must be Leakless that refuses it; inf,
    out-of-range widgets and (on 0.33.0) unknown options may already be refused by ComfyUI's own validation."""
    nodes, _ = comfy_nodes
    schema = schema_of(nodes, node_id)
    wrong = []
    for input_id, value in bad_inputs.cases(schema):
        message = run_message(bad_inputs.graph(node_id, schema, **{input_id: value}))
        ours = message is not None and all(p in message for p in bad_inputs.our_message(schema, input_id))
        nan = isinstance(value, float) and math.isnan(value)
        if not (ours or (not nan and message and bad_inputs.comfy_refused(message, input_id))):
            wrong.append((input_id, value, message))
    assert not wrong


@pytest.mark.parametrize("node_id,input_id,value", [
    ("LeaklessDeLeaker", "alpha", math.nan),
    ("LeaklessDeLeaker", "alpha", 100.0),  # linked values are never range-checked by ComfyUI
    ("LeaklessToMeSemanticBinding", "semantic_lr", -1.0),
    ("LeaklessDeLeakerMasks", "opacity", 2.0),
    ("LeaklessTraceGrid", "columns", 1000),
    ("LeaklessToMeSemanticBinding", "entropy_iterations", -1),
])
def test_linked_values_are_refused(comfy_nodes, node_id, input_id, value):
    nodes, _ = comfy_nodes
    schema = schema_of(nodes, node_id)
    message = run_message(bad_inputs.linked(bad_inputs.graph(node_id, schema), input_id, value))
    assert message is not None
    for part in bad_inputs.our_message(schema, input_id):
        assert part in message


def test_good_defaults_still_run(comfy_nodes):
    """The graph the table uses runs with the schema's defaults: only the bad value stops it."""
    nodes, _ = comfy_nodes
    for node_id in ("LeaklessDeLeaker", "LeaklessToMeEncode", "LeaklessTokenTrace"):
        assert run_message(bad_inputs.graph(node_id, schema_of(nodes, node_id))) is None


# ----------------------------------------------------------------------------------------------------------
# The explicit table (bad_inputs.ROWS): every node and the route, each row a class of bad or edge input

EXPECTED_ROWS = 126


class RouteRequest:
    """What the route reads of aiohttp's request: json() decodes the body as UTF-8, then parses it."""

    def __init__(self, body: bytes):
        self.body = body

    async def json(self):
        return json.loads(self.body.decode("utf-8"))


def route_outcome(leakless, body: bytes) -> tuple[str | None, str]:
    """(the error of a 400, None on a 200; the answer's text), from the route's own handler."""
    import asyncio

    from leakless.nodes.driver import routes

    response = asyncio.run(routes._tokenize(RouteRequest(body)))
    text = response.body.decode()
    assert response.status in (200, 400), response.status
    return (json.loads(text)["error"] if response.status == 400 else None), text


def graph_outcome(row, schema) -> tuple[str | None, str | None]:
    try:
        outputs = comfy_env.run_prompt(row.graph(schema))
    except comfy_env.ExecutionFailed as e:
        detail = e.args[0]
        return (detail.get("exception_message", str(detail)) if isinstance(detail, dict) else str(detail)), None
    return None, outputs[row.shows]["text"][0]


def test_the_explicit_table_covers_every_node_and_the_route():
    assert len(bad_inputs.ROWS) == EXPECTED_ROWS
    assert {r.node for r in bad_inputs.ROWS} == set(SCHEMAS) | {bad_inputs.ROUTE}
    assert set(bad_inputs.NAMES) == set(SCHEMAS)
    assert len({r.id for r in bad_inputs.ROWS}) == len(bad_inputs.ROWS)


@pytest.mark.parametrize("row", bad_inputs.ROWS, ids=lambda r: r.id)
def test_explicit_row(comfy_nodes, leakless, row):
    if row.node == bad_inputs.ROUTE:
        message, shown = route_outcome(leakless, row.body())
    else:
        schema = schema_of(comfy_nodes[0], row.node)
        assert schema.display_name == bad_inputs.NAMES[row.node]
        message, shown = graph_outcome(row, schema)
    assert not row.check(message, shown), (message, (shown or "")[:2000])
