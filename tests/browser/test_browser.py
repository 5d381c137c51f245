"""The real frontend (comfyui-frontend-package, pinned) in Debian's Chromium, against the real server."""

import json
import os

import comfy_env
import pytest
from browser import chromium_path, comfy_page
from expected import EXPECTED_NODE_IDS
from workflows.examples import EXAMPLES, KNOWN_BUGS, shrink, unavailable

from conftest import REPO

WORKFLOWS = sorted((REPO / "examples_workflows").glob("*.json"))

if chromium_path() is None:
    reason = "Chromium not found (apt-get install chromium, or set LEAKLESS_CHROMIUM)"
    if os.environ.get("LEAKLESS_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"browser tests are required here: {reason}")
    pytestmark = pytest.mark.skip(reason=reason)

LOAD = """async (wf) => {
  await window.app.loadGraphData(wf);
  const missing = wf.nodes.map((n) => n.type).filter((t) => !LiteGraph.registered_node_types[t]);
  const p = await window.app.graphToPrompt();
  return { missing, loaded: window.app.graph._nodes.length, prompt: p.output };
}"""


NEWEST = comfy_env.CACHE / "frontend-newest" / "comfyui_frontend_package" / "static"


@pytest.fixture(scope="module", params=["pinned", "newest"])
def frontend(request, comfy_server, output_dir):
    """The server with the frontend this ComfyUI pins (1.32.9 for 0.3.75, 1.49.6 for 0.33.0: the venv's), then with
    the newest release tested (tests/harness/setup_env.sh installs it into .cache/frontend-newest)."""
    if request.param == "pinned":
        comfy_server.frontend_name = "pinned"
        yield comfy_server
        return
    if not NEWEST.is_dir():
        pytest.skip("the newest frontend is not installed (run tests/harness/setup_env.sh)")
    from live_server import ComfyServer

    server = ComfyServer(log_path=output_dir / "server-newest-frontend.log",
                         extra_args=["--front-end-root", str(NEWEST)]).start()
    server.frontend_name = "newest"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(frontend, output_dir):
    console = []
    with comfy_page(frontend, console) as page:
        page.console_log = console
        yield page
    (output_dir / f"browser-console-{frontend.frontend_name}.log").write_text("\n".join(console))


def test_extension_and_nodes_registered(page):
    registered = page.evaluate(
        "() => Object.keys(LiteGraph.registered_node_types).filter(k => k.startsWith('Leakless'))")
    assert sorted(registered) == EXPECTED_NODE_IDS


def test_every_example_workflow_is_generated_from_its_definition():
    assert sorted(p.stem for p in WORKFLOWS) == sorted(EXAMPLES)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_converts_and_runs(request, page, frontend, output_dir, path):
    wf = json.loads(path.read_text())
    result = page.evaluate(LOAD, wf)
    assert result["missing"] == [], f"{path.name}: node types missing in the frontend"
    assert result["loaded"] == len(wf["nodes"])
    page.screenshot(path=str(output_dir / f"workflow-{path.stem}-{frontend.frontend_name}.png"))
    if reason := unavailable(path.stem):
        pytest.skip(f"loaded and converted; not run: {reason}")
    if path.stem in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_BUGS[path.stem], strict=True))
    outputs = frontend.run(shrink(result["prompt"]))
    output_nodes = [k for k, v in result["prompt"].items()
                    if v["class_type"] in ("SaveImage", "PreviewImage", "LeaklessTokenInspector")]
    assert output_nodes and all(outputs.get(k) for k in output_nodes)
    for k in output_nodes:
        if result["prompt"][k]["class_type"] == "LeaklessTokenInspector":
            assert outputs[k]["text"][0].startswith("encoder")


def test_token_table_is_shown_on_the_node_after_queueing_from_the_ui(page, output_dir):
    wf = json.loads((REPO / "examples_workflows" / "token_inspector_sdxl.json").read_text())
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", wf)
    page.evaluate("""() => {
      for (const n of window.app.graph._nodes)
        for (const w of n.widgets ?? []) {
          if (w.name === 'width' || w.name === 'height') w.value = 64;
          if (w.name === 'steps') w.value = 2;
        }
    }""")
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.leakless-token-table')].some(e => e.value.includes('CLIP-G'))",
        timeout=120_000)
    text = page.evaluate("() => document.querySelector('.leakless-token-table').value")
    assert "sunglasses</w>" in text and "1.2" in text
    page.screenshot(path=str(output_dir / "token-inspector-after-run.png"))


PICK = """async ([wf, nodeType, text, clicks]) => {
  await window.app.loadGraphData(wf);
  const node = window.app.graph._nodes.find((n) => n.type === nodeType);
  const textWidget = node.widgets.find((w) => w.name === 'text');
  if (textWidget && text !== null) textWidget.value = text;
  const picker = node.widgets.find((w) => w.name === 'leakless_picker').element;
  picker.querySelector('.leakless-picker-show').click();
  const started = Date.now();
  while (!picker.querySelector('.leakless-chip') && !picker.querySelector('.leakless-picker-error')) {
    if (Date.now() - started > 30000) throw new Error('no chips');
    await new Promise((r) => setTimeout(r, 50));
  }
  const rows = [...picker.querySelectorAll('.leakless-picker-encoder')].map((r) => r.dataset.encoder);
  const multi = [...picker.querySelectorAll('.leakless-multi')].map((c) => c.dataset.word);
  for (const [word, shift] of clicks) {
    const chip = [...picker.querySelectorAll('.leakless-word')].find((c) => c.dataset.word === word);
    chip.dispatchEvent(new MouseEvent('click', { shiftKey: shift, bubbles: true }));
  }
  const p = await window.app.graphToPrompt();
  return { rows, multi, prompt: p.output, error: picker.querySelector('.leakless-picker-error')?.textContent };
}"""


def test_token_picker_writes_flux_entities_and_the_workflow_runs(page, frontend, output_dir):
    wf = json.loads((REPO / "examples_workflows" / "flux_deleaker.json").read_text())
    picked = page.evaluate(PICK, [wf, "LeaklessDeLeakerEncode", "A cow and a horse in a farm",
                                  [["cow", False], ["horse", False]]])
    assert picked["error"] is None and picked["rows"] == ["l", "t5xxl"]
    node = next(v for v in picked["prompt"].values() if v["class_type"] == "LeaklessDeLeakerEncode")
    assert node["inputs"]["entities"] == "cow, horse"
    page.screenshot(path=str(output_dir / f"token-picker-flux-{frontend.frontend_name}.png"))
    outputs = frontend.run(shrink(picked["prompt"]))
    assert any(outputs.values())


def test_token_picker_writes_sdxl_groups_and_the_workflow_runs(page, frontend, output_dir):
    wf = json.loads((REPO / "examples_workflows" / "sdxl_tome.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "LeaklessToMeEncode":
            node["widgets_values"][1] = ""  # groups (after the linked text): the picker writes them
    clicks = [["cat", False], ["wearing", False], ["sunglasses", False], ["dog", True], ["wearing", False],
              ["a", False], ["hat", False]]
    picked = page.evaluate(PICK, [wf, "LeaklessToMeEncode", None, clicks])  # the prompt comes from a linked node
    assert picked["error"] is None and picked["rows"] == ["g", "l"]
    node = next(v for v in picked["prompt"].values() if v["class_type"] == "LeaklessToMeEncode")
    assert node["inputs"]["groups"] == "cat: wearing, sunglasses\ndog: wearing, a, hat"
    page.screenshot(path=str(output_dir / f"token-picker-sdxl-{frontend.frontend_name}.png"))
    outputs = frontend.run(shrink(picked["prompt"], size=64, steps=2))
    assert any(outputs.values())


def test_token_picker_degrades_to_the_text_input_without_the_route(page):
    wf = json.loads((REPO / "examples_workflows" / "flux_deleaker.json").read_text())
    page.route("**/leakless/tokenize", lambda route: route.abort())
    try:
        result = page.evaluate("""async (wf) => {
          await window.app.loadGraphData(wf);
          const node = window.app.graph._nodes.find((n) => n.type === 'LeaklessDeLeakerEncode');
          const picker = node.widgets.find((w) => w.name === 'leakless_picker').element;
          picker.querySelector('.leakless-picker-show').click();
          const started = Date.now();
          while (!picker.querySelector('.leakless-picker-error') && Date.now() - started < 30000)
            await new Promise((r) => setTimeout(r, 50));
          node.widgets.find((w) => w.name === 'entities').value = 'cow, horse';  // typed by hand
          const p = await window.app.graphToPrompt();
          const entry = Object.values(p.output).find((v) => v.class_type === 'LeaklessDeLeakerEncode');
          const message = picker.querySelector('.leakless-picker-error')?.textContent;
          return { message, entities: entry.inputs.entities };
        }""", wf)
    finally:
        page.unroute("**/leakless/tokenize")
    assert "Token picker unavailable" in result["message"] and "by hand" in result["message"]
    assert result["entities"] == "cow, horse"
