"""The real ComfyUI server with Leakless in custom_nodes: /object_info, /extensions, help pages, /prompt and
/history."""

import pytest
from expected import EXPECTED_NODE_IDS
from workflows import graphs
from workflows.examples import EXAMPLES, shrink


def test_object_info_lists_every_leakless_node(comfy_server):
    info = comfy_server.get("/object_info")
    ids = sorted(k for k in info if k.startswith("Leakless"))
    assert ids == EXPECTED_NODE_IDS
    inspector = info["LeaklessTokenInspector"]
    assert inspector["category"] == "Leakless/inspect"
    assert list(inspector["input"]["required"]) == ["clip", "text"]
    assert inspector["input"]["required"]["text"][1]["tooltip"]
    assert inspector["output_node"] is True


def test_extension_js_is_served(comfy_server):
    extensions = comfy_server.get("/extensions")
    assert "/extensions/leakless/leakless.js" in extensions
    assert not [e for e in extensions if "leakless" in e and not e.endswith("/leakless.js")]  # only the module


def test_every_node_has_its_help_page(comfy_server):
    """The frontend shows WEB_DIRECTORY/docs/<NodeId>.md as the node's help: served for every node, titled with
    its display name, describing every input."""
    import urllib.request

    info = comfy_server.get("/object_info")
    for node_id in EXPECTED_NODE_IDS:
        with urllib.request.urlopen(f"{comfy_server.url}/extensions/leakless/docs/{node_id}.md") as r:  # noqa: S310
            page = r.read().decode()
        assert page.startswith(f"# {info[node_id]['display_name']}\n"), node_id
        inputs = {**info[node_id]["input"].get("required", {}), **info[node_id]["input"].get("optional", {})}
        for name in inputs:
            assert f"`{name}`" in page, (node_id, name)


def test_flux_graph_with_inspector_via_prompt_endpoint(comfy_server):
    graph = graphs.with_token_inspector(graphs.flux_dev(width=64, height=96), ["11", 0], graphs.PROMPT)
    outputs = comfy_server.run(graph)
    assert outputs["9"]["images"][0]["type"] == "output"
    assert "\u2581cow" in outputs["100"]["text"][0]


def test_sdxl_graph_with_inspector_via_prompt_endpoint(comfy_server):
    graph = graphs.with_token_inspector(graphs.sdxl_default(), ["4", 1], "a (red:1.3) bottle")
    outputs = comfy_server.run(graph)
    assert outputs["9"]["images"]
    table = outputs["100"]["text"][0]
    assert "red</w>" in table and "1.3" in table


def test_invalid_graph_is_refused_with_a_message(comfy_server):
    graph = {"1": {"class_type": "LeaklessTokenInspector", "inputs": {"text": "a cat"}}}
    try:
        comfy_server.queue(graph)
    except AssertionError as e:
        assert "clip" in str(e)
    else:
        raise AssertionError("a graph without its CLIP input was accepted")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_graph_runs_via_the_server(comfy_server, name):
    outputs = comfy_server.run(shrink(EXAMPLES[name]()))
    assert outputs


def _post(comfy_server, path, body: bytes):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(comfy_server.url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback only
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_tokenize_route_gives_tokens_per_encoder(comfy_server):
    import json

    text = "a photo of a pelican wearing a (red hat:1.2)"
    for family, keys in (("flux", ["l", "t5xxl"]), ("sdxl", ["g", "l"]), ("sd15", ["l"])):
        for path in ("/leakless/tokenize", "/api/leakless/tokenize"):
            status, body = _post(comfy_server, path, json.dumps({"text": text, "family": family}).encode())
            assert status == 200 and body["family"] == family
            assert sorted(e["key"] for e in body["encoders"]) == keys
    status, body = _post(comfy_server, "/leakless/tokenize", json.dumps({"text": text, "family": "sdxl"}).encode())
    words = {w["word"]: w for w in body["words"]}
    assert list(words) == ["a", "photo", "of", "pelican", "wearing", "red", "hat"]
    assert words["pelican"]["tokens"]["l"] >= 1 and words["red"]["span"] == [text.index("red"), text.index("red") + 3]
    clip_l = next(e for e in body["encoders"] if e["key"] == "l")
    assert [t["kind"] for t in clip_l["tokens"]][0] == "bos" and clip_l["tokens"][-1]["kind"] == "eos"
    assert next(t for t in clip_l["tokens"] if t["word"] == "red")["weight"] == 1.2


@pytest.mark.parametrize("body, message", [
    (b"not json", "must be JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"text": 5, "family": "sdxl"}', "'text' must be a string"),
    (b'{"text": "a cat", "family": "sd3"}', "'family' must be one of flux, sdxl, sd15"),
    (('{"text": "' + "a " * 10_001 + '", "family": "flux"}').encode(), "the limit is 20000"),
])
def test_tokenize_route_refuses_bad_input_with_a_message(comfy_server, body, message):
    status, reply = _post(comfy_server, "/leakless/tokenize", body)
    assert status == 400 and message in reply["error"]
