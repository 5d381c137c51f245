"""Regenerate examples_workflows/*.json (UI format) from tests/workflows/examples.py through the real frontend.

    .cache/venv/bin/python tests/harness/export_workflows.py                # make workflows
    .cache/venv/bin/python tests/harness/export_workflows.py --source-only  # only name the pack (no browser)

Each API graph is loaded with the frontend's own loader, laid out, and serialized exactly as "Save" would. Every
Leakless node then names the pack it needs, as ComfyUI-Manager writes it on the nodes of a pack it knows
(js/workflow-metadata.js: properties.cnr_id, the registry id, and properties.ver): the frontend reads them to say
what to install when a shared workflow has missing nodes.
"""

import json
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import comfy_env  # noqa: E402
from expected import EXPECTED_NODE_IDS  # noqa: E402

OUT = comfy_env.REPO / "examples_workflows"

LAYOUT = """async ([api, name]) => {
  await window.app.loadApiJson(api, name);
  const g = window.app.graph;
  g.arrange?.(80);
  return JSON.stringify(g.serialize(), null, 1);
}"""


def pack_source() -> dict:
    """{"cnr_id": the registry id, "ver": the version}, from pyproject.toml's [project]."""
    project = tomllib.loads((comfy_env.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {"cnr_id": project["name"], "ver": project["version"]}


def with_pack_source(workflow: dict, source: dict) -> dict:
    """The workflow with pack_source() in the properties of every Leakless node (subgraphs' nodes included)."""
    graphs = [workflow, *workflow.get("definitions", {}).get("subgraphs", [])]
    for node in (n for g in graphs for n in g.get("nodes", [])):
        if node.get("type") in EXPECTED_NODE_IDS:
            node["properties"] = {**(node.get("properties") or {}), **source}
    return workflow


def write(path: Path, workflow: dict) -> None:
    """As the frontend's JSON.stringify(workflow, null, 1) writes it."""
    path.write_text(json.dumps(with_pack_source(workflow, pack_source()), indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    print("wrote", path)


def main():
    if "--source-only" in sys.argv[1:]:
        for path in sorted(OUT.glob("*.json")):
            write(path, json.loads(path.read_text(encoding="utf-8")))
        return
    import subprocess

    from browser import comfy_page
    from live_server import ComfyServer
    from workflows.examples import EXAMPLES

    subprocess.run([sys.executable, "-c", "import comfy_env, tiny_models; comfy_env.import_comfy();"
                    "tiny_models.write_all(str(comfy_env.BASE / 'models'))"], cwd=HERE, check=True)
    server = ComfyServer().start()
    try:
        with comfy_page(server) as page:
            OUT.mkdir(exist_ok=True)
            for name, build in EXAMPLES.items():
                write(OUT / f"{name}.json", json.loads(page.evaluate(LAYOUT, [build(), name])))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
