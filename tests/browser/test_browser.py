"""The real frontend (comfyui-frontend-package, pinned) in Debian's Chromium, against the real server."""

import json
import os

import comfy_env
import pytest
from browser import chromium_path, comfy_page, pack_console
from expected import EXPECTED_NODE_IDS
from workflows.examples import EXAMPLES, shrink, unavailable

from pack import REPO

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
def test_example_workflow_loads_converts_and_runs(page, frontend, output_dir, path):
    wf = json.loads(path.read_text())
    result = page.evaluate(LOAD, wf)
    assert result["missing"] == [], f"{path.name}: node types missing in the frontend"
    assert result["loaded"] == len(wf["nodes"])
    page.screenshot(path=str(output_dir / f"workflow-{path.stem}-{frontend.frontend_name}.png"))
    if reason := unavailable(path.stem):
        pytest.skip(f"loaded and converted; not run: {reason}")
    outputs = frontend.run(shrink(result["prompt"]))
    output_nodes = [k for k, v in result["prompt"].items()
                    if v["class_type"] in ("SaveImage", "PreviewImage", "LeaklessTokenInspector")]
    assert output_nodes and all(outputs.get(k) for k in output_nodes)
    for k in output_nodes:
        if result["prompt"][k]["class_type"] == "LeaklessTokenInspector":
            assert "\nencoder " in outputs[k]["text"][0]  # after the family line


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


# Clicks Show tokens on `node` and waits for the chips (or the error).
SHOW_TOKENS = """
  const picker = node.widgets.find((w) => w.name === 'leakless_picker').element;
  picker.querySelector('.leakless-picker-show').click();
  const started = Date.now();
  while (!picker.querySelector('.leakless-chip') && !picker.querySelector('.leakless-picker-error')) {
    if (Date.now() - started > 30000) throw new Error('no chips');
    await new Promise((r) => setTimeout(r, 50));
  }
"""

PICK = """async ([wf, nodeType, text, clicks]) => {
  await window.app.loadGraphData(wf);
  const node = window.app.graph._nodes.find((n) => n.type === nodeType);
  const textWidget = node.widgets.find((w) => w.name === 'text');
  if (textWidget && text !== null) textWidget.value = text;
""" + SHOW_TOKENS + """
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


def test_token_picker_writes_heatmap_words_on_sdxl_and_the_workflow_runs(page, frontend):
    wf = json.loads((REPO / "examples_workflows" / "sdxl_attention_heatmap.json").read_text())
    picked = page.evaluate(PICK, [wf, "LeaklessHeatmapEncode", "a red cat sleeping on a blue sofa",
                                  [["cat", False], ["sofa", False]]])
    assert picked["error"] is None
    node = next(v for v in picked["prompt"].values() if v["class_type"] == "LeaklessHeatmapEncode")
    assert node["inputs"]["words"] == "cat, sofa"
    outputs = frontend.run(shrink(picked["prompt"]))
    assert any("text" in v for v in outputs.values())  # Heatmap Show names the words


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


PICK_FAMILY = """async ([api, text]) => {
  await window.app.loadApiJson(api, 'family');
  const node = window.app.graph._nodes.find((n) => n.type === 'LeaklessTokenTrace');
  node.widgets.find((w) => w.name === 'text').value = text;
""" + SHOW_TOKENS + """
  const select = picker.querySelector('.leakless-picker-family');
  for (const word of ['1984', 'cat'])
    [...picker.querySelectorAll('.leakless-word')].find((c) => c.dataset.word === word)
      .dispatchEvent(new MouseEvent('click', { bubbles: true }));
  return { family: select.value, options: [...select.options].map((o) => [o.value, o.disabled]),
           rows: [...picker.querySelectorAll('.leakless-picker-encoder')].map((r) => r.dataset.encoder),
           selection: node.widgets.find((w) => w.name === 'selection').value };
}"""


def test_token_picker_takes_the_family_from_the_clip_loader_and_quotes_numbers(page):
    """A CLIPLoader of type qwen_image makes the picker tokenize for Qwen-Image by itself (every registry family is
    offered, FLUX.2 dev greyed out: its tokenizer is in its file); a clicked number is written as a word."""
    api = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                                         "type": "qwen_image"}},
           "2": {"class_type": "LeaklessTokenTrace", "inputs": {
               "clip": ["1", 0], "text": "", "mode": "selection", "selection": "", "include_full_prompt": True,
               "pooled_output": "reference"}}}
    picked = page.evaluate(PICK_FAMILY, [api, "a 1984 poster of a cat"])
    assert picked["family"] == "qwen_image" and picked["rows"] == ["qwen25_7b"]
    listed = page.evaluate("async () => (await (await fetch('/leakless/families')).json()).map((f) => f.id)")
    assert [value for value, _ in picked["options"]] == listed and "z_image" in listed
    assert dict(picked["options"])["flux2"] is True
    assert picked["selection"] == '"1984", cat'


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


def test_templates_browser_shows_the_pack_and_opens_and_runs_a_workflow(page, frontend, output_dir):
    """Workflow > Browse Templates: the pack's section lists every example workflow with its thumbnail; clicking
    one opens it on the canvas, and it runs."""
    thumbnails = []

    def record(response):
        if "/workflow_templates/leakless/" in response.url and response.url.endswith(".jpg"):
            thumbnails.append((response.url.rsplit("/", 1)[-1], response.status))

    page.on("response", record)
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
    dialog = page.get_by_role("dialog")  # not the canvas, where Leakless nodes carry a "leakless" badge
    dialog.get_by_text("leakless", exact=True).first.click()
    for path in WORKFLOWS:
        dialog.get_by_text(path.stem, exact=True).first.wait_for(timeout=30_000)
    for _ in range(150):  # the first cards' thumbnails (the rest load as they scroll into view)
        if len(thumbnails) >= min(4, len(WORKFLOWS)):
            break
        page.wait_for_timeout(200)
    page.screenshot(path=str(output_dir / f"templates-browser-{frontend.frontend_name}.png"))
    page.remove_listener("response", record)
    assert thumbnails and all(status == 200 for _, status in thumbnails), thumbnails
    dialog.get_by_text("token_inspector_sdxl", exact=True).first.click()
    page.wait_for_function("() => window.app.graph._nodes.some((n) => n.type === 'LeaklessTokenInspector')",
                           timeout=30_000)
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    outputs = frontend.run(shrink(prompt))
    inspector = next(k for k, v in prompt.items() if v["class_type"] == "LeaklessTokenInspector")
    assert "\nencoder " in outputs[inspector]["text"][0]


@pytest.mark.parametrize("vue_nodes", [False, True], ids=["classic-nodes", "nodes-2.0"])
def test_picker_and_token_table_with_nodes_2_0_on_and_off(page, frontend, output_dir, vue_nodes):
    """The Show tokens picker and the Token Inspector's table, clicked and read as a user does (real clicks on the
    rendered elements), with the frontend's Nodes 2.0 (Vue nodes, setting Comfy.VueNodes.Enabled) on and off."""
    name = f"{frontend.frontend_name}-{'nodes2' if vue_nodes else 'classic'}"
    wf = json.loads((REPO / "examples_workflows" / "flux_deleaker.json").read_text())
    page.evaluate("""async ([wf, on]) => {
      await window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on);
      await window.app.loadGraphData(wf);
      const node = window.app.graph._nodes.find((n) => n.type === 'LeaklessDeLeakerEncode');
      node.widgets.find((w) => w.name === 'text').value = 'A cow and a horse in a farm';
      const canvas = window.app.canvas;  // the node at the top left, at 100%
      canvas.ds.scale = 1;
      canvas.ds.offset = [80 - node.pos[0], 120 - node.pos[1]];
      canvas.setDirty(true, true);
    }""", [wf, vue_nodes])
    page.locator(".leakless-picker-show").first.click(timeout=30_000)
    for word in ("cow", "horse"):
        page.locator(f".leakless-word[data-word='{word}']").first.click(timeout=30_000)
    page.screenshot(path=str(output_dir / f"token-picker-{name}.png"))
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    entry = next(v for v in prompt.values() if v["class_type"] == "LeaklessDeLeakerEncode")
    assert entry["inputs"]["entities"] == "cow, horse"

    wf = json.loads((REPO / "examples_workflows" / "token_inspector_sdxl.json").read_text())
    page.evaluate("""async (wf) => {
      await window.app.loadGraphData(wf);
      for (const n of window.app.graph._nodes)
        for (const w of n.widgets ?? []) {
          if (w.name === 'width' || w.name === 'height') w.value = 64;
          if (w.name === 'steps') w.value = 2;
        }
      const node = window.app.graph._nodes.find((n) => n.type === 'LeaklessTokenInspector');
      const canvas = window.app.canvas;
      canvas.ds.scale = 1;
      canvas.ds.offset = [80 - node.pos[0], 120 - node.pos[1]];
      canvas.setDirty(true, true);
      await window.app.queuePrompt(0, 1);
    }""", wf)
    table = page.locator(".leakless-token-table").first
    page.wait_for_function(
        "() => [...document.querySelectorAll('.leakless-token-table')].some(e => e.value.includes('CLIP-G'))",
        timeout=120_000)
    table.wait_for(state="visible", timeout=30_000)
    assert "sunglasses</w>" in table.input_value()
    assert table.bounding_box()["height"] >= 100  # readable: several rows, not one line
    page.screenshot(path=str(output_dir / f"token-table-{name}.png"))
    page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); }")


def test_the_pack_causes_no_console_warning_or_error(page):
    """Runs after every other test of this frontend (same page): nothing the pack's JS did printed a warning or an
    error, including the frontend's deprecation warnings about APIs it called (tests/harness/browser.py)."""
    assert pack_console(page) == []
