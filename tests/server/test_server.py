"""The real ComfyUI server with Leakless in custom_nodes: /object_info, /extensions, help pages, /prompt and
/history."""

import pytest
from expected import EXPECTED_NODE_IDS
from workflows import graphs
from workflows.examples import EXAMPLES, shrink, unavailable


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
    if reason := unavailable(name):
        pytest.skip(reason)
    outputs = comfy_server.run(shrink(EXAMPLES[name]()))
    assert outputs


@pytest.mark.parametrize("family", ["qwen_image", "z_image", "flux2_dev"])
def test_redundant_token_mask_on_the_llm_templates_via_the_server(comfy_server, family):
    """Redundant Token Mask's causal rule on ComfyUI's own Qwen-Image, Z-Image and FLUX.2 template graphs, in
    place of the prompt's CLIPTextEncode, through /prompt: its report names what it removed."""
    from workflows.examples import EXAMPLE_FAMILY, TEMPLATES, _replace_encode

    name = next(n for n, f in EXAMPLE_FAMILY.items() if f == family)
    if reason := unavailable(name):
        pytest.skip(reason)
    build, clip, encode, _ = TEMPLATES[family]
    graph = _replace_encode(build(), encode, "90", {"class_type": "LeaklessRedundantTokenMask", "inputs": {
        "clip": [clip, 0], "text": "a zorblaxian pelican on a rock", "mode": "causal rule",
        "items": "zorblaxian pelican", "classifier": "none", "threshold": 0.5, "pooled_output": "reference"}})
    outputs = comfy_server.run(shrink(graph))
    (report,) = outputs["90"]["text"]
    assert "zorblaxian pelican" in report and "removed" in report.lower()
    assert any("images" in o for o in outputs.values())


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
    assert clip_l["kind"][0] == "bos" and clip_l["kind"][-1] == "eos" and clip_l["word"][0] is None
    red = [w["word"] for w in body["words"]].index("red")
    assert clip_l["weight"][clip_l["word"].index(red)] == 1.2
    assert len(clip_l["position"]) == len(clip_l["text"]) == len(clip_l["word"]) == len(clip_l["weight"])


def _get(comfy_server, path):
    import json
    import urllib.request

    with urllib.request.urlopen(comfy_server.url + path, timeout=60) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def test_families_route_lists_the_registry(comfy_server):
    listed = {f["id"]: f for f in _get(comfy_server, "/leakless/families")}
    assert list(listed) == ["flux", "sdxl", "sd15", "chroma", "sd3", "qwen_image", "z_image", "flux2", "flux2_klein",
                            "krea2", "hidream", "hunyuan_image", "lumina2"]
    assert listed["qwen_image"]["available"] and not listed["qwen_image"]["weights"]
    assert ["CLIPLoader", "lumina2"] in listed["z_image"]["loaders"]
    assert not listed["flux2"]["available"] and "text encoder file" in listed["flux2"]["reason"]
    import comfy_env

    assert listed["krea2"]["available"] == (comfy_env.COMFY_NAME != "0.3.75")


@pytest.mark.parametrize("family, cat_row", [("qwen_image", 2), ("z_image", 5)])
def test_tokenize_route_gives_the_rows_of_llm_encoders(comfy_server, family, cat_row):
    """Positions are the rows the diffusion model reads: Qwen-Image's system template is stripped by ComfyUI,
    Z-Image keeps its template; template tokens are listed as such, never as words."""
    import json

    status, body = _post(comfy_server, "/leakless/tokenize", json.dumps({"text": "a red cat",
                                                                          "family": family}).encode())
    assert status == 200, body
    (enc,) = body["encoders"]
    assert [w["word"] for w in body["words"]] == ["a", "red", "cat"]
    assert [p for p, w in zip(enc["position"], enc["word"], strict=True) if w == 2] == [cat_row]
    assert enc["kind"][-5:] == ["template"] * 5 and enc["length"] == cat_row + 6
    status, body = _post(comfy_server, "/leakless/tokenize", json.dumps({"text": "a (red:1.5) cat",
                                                                          "family": family}).encode())
    assert [w["word"] for w in body["words"]] == ["a", "(red:1.5)", "cat"]  # plain text to an LLM tokenizer
    assert set(body["encoders"][0]["weight"]) == {1.0}


@pytest.mark.parametrize("body, message", [
    (b"not json", "must be JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"text": 5, "family": "sdxl"}', "'text' must be a string"),
    (b'{"text": "a cat", "family": "sd4"}', "'family' must be one of flux, sdxl, sd15, chroma, sd3, qwen_image"),
    (b'{"text": "a cat", "family": ["flux"]}', "'family' must be one of"),
    (b'{"text": "a cat", "family": "flux2"}', "FLUX.2 dev reads its tokenizer from the text encoder file"),
    (('{"text": "' + "a " * 10_001 + '", "family": "flux"}').encode(), "the limit is 20000"),
    (b'{"text": "a \\ud800 cat", "family": "flux"}', "lone surrogate"),
    (b'{"text": "a \xff cat", "family": "flux"}', "must be JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b'{"text": {"a": ' * 20_000 + b"1" + b"}" * 20_000 + b', "family": "flux"}', "nests too deeply"),
    (('{"text": "' + "(" * 2000 + "cat" + ")" * 2000 + '", "family": "sdxl"}').encode(), "nest too deeply"),
])
def test_tokenize_route_refuses_bad_input_with_a_message(comfy_server, body, message):
    status, reply = _post(comfy_server, "/leakless/tokenize", body)
    assert status == 400 and message in reply["error"]


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.parametrize("family, text", [
    ("flux", ("\U0001f600\u6f22\u5b57" * 7000)[:20_000]),  # unspaced emoji + CJK: one word, ~2 CLIP tokens a char
    ("sdxl", ("\U0001f600\u6f22\u5b57" * 7000)[:20_000]),
    ("flux", "(" * 20_000),
    ("flux", "a " * 10_000),  # 10,000 words
])
def test_tokenize_route_stays_linear_on_the_worst_prompts(comfy_server, family, text):
    """Each word is sent once and each token field once: the response is at most ~150 bytes per character (at
    most 3 MB) and the server's peak memory barely moves (it was quadratic: 20,000 characters killed the server)."""
    import json

    before = _peak_rss_mb(comfy_server.proc.pid)
    status, body = _post(comfy_server, "/leakless/tokenize", json.dumps({"text": text, "family": family}).encode())
    assert status == 200, body
    size = len(json.dumps(body, ensure_ascii=False).encode())
    assert size < 150 * len(text), size
    assert _peak_rss_mb(comfy_server.proc.pid) - before < 400
    assert len(body["words"]) == len(text.split())


def test_every_example_workflow_is_a_template_with_its_thumbnail(comfy_server):
    """ComfyUI's Templates browser lists GET /workflow_templates and loads /api/workflow_templates/<pack>/<name>.json
    and .jpg (app/custom_node_manager.py): every workflow of examples_workflows/ is there, byte for byte."""
    import urllib.request

    from pack import REPO

    workflows = sorted((REPO / "examples_workflows").glob("*.json"))
    assert sorted(comfy_server.get("/workflow_templates")["leakless"]) == [p.stem for p in workflows]
    for path in workflows:
        for suffix in (".json", ".jpg"):
            url = f"{comfy_server.url}/api/workflow_templates/leakless/{path.stem}{suffix}"
            with urllib.request.urlopen(url) as r:  # noqa: S310 - loopback only
                body = r.read()
            assert body == path.with_suffix(suffix).read_bytes(), url
