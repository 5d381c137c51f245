"""Bad input through the real server's /prompt, as an API client sends it (Python's json writes NaN and Infinity
literals, which the server's json.loads reads): refused with the node, the input and the fix, as ComfyUI's node error
(HTTP 400) or as the node's execution error, and the server keeps serving. A representative subset of the generated
table in tests/workflows/bad_inputs.py, and every row of its explicit table (ROWS, the route's rows through
POST /leakless/tokenize); tests/headless/test_bad_input.py runs both tables headless."""

import json
import math
import time
import urllib.error
import urllib.request
import uuid

import pytest
from workflows import bad_inputs, graphs


def submit(server, prompt, timeout=120, outputs=None):
    """('refused', node errors text) on a 400; ('failed', exception message) or ('success', None) once it ran.
    `outputs`: a dict that receives the run's history outputs."""
    body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()  # allow_nan: NaN, Infinity
    try:
        prompt_id = server.request("/prompt", body)["prompt_id"]
    except urllib.error.HTTPError as e:
        assert e.code == 400
        return "refused", e.read().decode()
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = (server.get(f"/history/{prompt_id}").get(prompt_id) or {}).get("status", {})
        if status.get("completed") is not None:
            errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
            if outputs is not None:
                outputs.update(server.get(f"/history/{prompt_id}")[prompt_id].get("outputs", {}))
            return status["status_str"], errors[0]["exception_message"] if errors else None
        time.sleep(0.25)
    raise TimeoutError(prompt_id)


CASES = [  # node, input, value (as the JSON body carries it), whether a link feeds it
    ("LeaklessDeLeaker", "alpha", math.nan, False),
    ("LeaklessDeLeaker", "mask_history", "nan", False),  # a string: ComfyUI's float() reads it as NaN
    ("LeaklessDeLeaker", "mask_threshold", math.inf, False),
    ("LeaklessDeLeakerMasks", "opacity", math.nan, False),
    ("LeaklessToMeSemanticBinding", "entropy_step", math.nan, False),
    ("LeaklessToMeEncode", "noun_weight", math.nan, True),
    ("LeaklessRedundantTokenMask", "threshold", -math.inf, False),
    ("LeaklessDeLeaker", "alpha", 100.0, True),
    ("LeaklessTokenTrace", "mode", "not an option", False),
    ("LeaklessRedundantTokenMask", "pooled_output", "REFERENCE", False),
    ("LeaklessDeLeaker", "overlap", "", False),
    ("LeaklessToMeSemanticBinding", "semantic_latent", "anchor latent", False),
]


@pytest.mark.parametrize("node_id,input_id,value,link", CASES)
def test_refused_with_a_message(comfy_server, comfy_nodes, node_id, input_id, value, link):
    nodes, _ = comfy_nodes
    schema = nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
    g = bad_inputs.graph(node_id, schema)
    g = bad_inputs.linked(g, input_id, value) if link else bad_inputs.graph(node_id, schema, **{input_id: value})
    outcome, message = submit(comfy_server, g)
    ours = all(p in (message or "") for p in bad_inputs.our_message(schema, input_id))
    if str(value).lower() == "nan" or link:  # ComfyUI's own checks let these through
        assert outcome == "error" and ours, message
    else:
        assert (outcome == "error" and ours) or (
            outcome == "refused" and input_id in message
            and any(t in message for t in bad_inputs.COMFY_REFUSALS)), (outcome, message)


def test_the_server_keeps_serving(comfy_server, comfy_nodes):
    schema = comfy_nodes[0].NODE_CLASS_MAPPINGS["LeaklessDeLeaker"].GET_SCHEMA()
    assert submit(comfy_server, bad_inputs.graph("LeaklessDeLeaker", schema, alpha=math.nan))[0] == "error"
    assert comfy_server.get("/system_stats")["system"]
    outputs = comfy_server.run(graphs.with_token_inspector(
        {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}},
        ["4", 1], "a red cat"))
    assert "red</w>" in outputs["100"]["text"][0]


def post_route(server, body: bytes) -> tuple[str | None, str]:
    """(the error of a 400, None on a 200; the answer's text) from POST /leakless/tokenize."""
    req = urllib.request.Request(server.url + "/leakless/tokenize", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback only
            return None, r.read().decode()
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code
        return json.loads(e.read())["error"], ""


@pytest.mark.parametrize("row", bad_inputs.ROWS, ids=lambda r: r.id)
def test_explicit_row_through_the_server(comfy_server, comfy_nodes, row):
    """Every row of the explicit table, as a client sends it: the same refusal or output as headless."""
    if row.node == bad_inputs.ROUTE:
        message, shown = post_route(comfy_server, row.body())
    else:
        schema = comfy_nodes[0].NODE_CLASS_MAPPINGS[row.node].GET_SCHEMA()
        outputs = {}
        outcome, message = submit(comfy_server, row.graph(schema), outputs=outputs)
        assert outcome != "refused", message  # every row reaches the node: ComfyUI's own checks pass them
        shown = outputs.get(row.shows, {}).get("text", [None])[0] if outcome == "success" else None
        if outcome == "error":
            assert message is not None
    assert not row.check(message, shown), (message, (shown or "")[:2000])
    assert comfy_server.get("/system_stats")["system"]  # still serving
