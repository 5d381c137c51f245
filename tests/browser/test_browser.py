"""The real frontend (comfyui-frontend-package, pinned) in Debian's Chromium, against the real server."""

import json
import os

import pytest
from browser import chromium_path, comfy_page
from expected import EXPECTED_NODE_IDS
from workflows.examples import EXAMPLES, shrink

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


@pytest.fixture(scope="module")
def page(comfy_server, output_dir):
    console = []
    with comfy_page(comfy_server, console) as page:
        page.console_log = console
        yield page
    (output_dir / "browser-console.log").write_text("\n".join(console))


def test_extension_and_nodes_registered(page):
    registered = page.evaluate(
        "() => Object.keys(LiteGraph.registered_node_types).filter(k => k.startsWith('Leakless'))")
    assert sorted(registered) == EXPECTED_NODE_IDS


def test_every_example_workflow_is_generated_from_its_definition():
    assert sorted(p.stem for p in WORKFLOWS) == sorted(EXAMPLES)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_converts_and_runs(page, comfy_server, output_dir, path):
    wf = json.loads(path.read_text())
    result = page.evaluate(LOAD, wf)
    assert result["missing"] == [], f"{path.name}: node types missing in the frontend"
    assert result["loaded"] == len(wf["nodes"])
    page.screenshot(path=str(output_dir / f"workflow-{path.stem}.png"))
    outputs = comfy_server.run(shrink(result["prompt"]))
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
