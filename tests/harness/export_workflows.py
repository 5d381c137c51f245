"""Regenerate examples_workflows/*.json (UI format) from tests/workflows/examples.py through the real frontend.

    .cache/venv/bin/python tests/harness/export_workflows.py

Each API graph is loaded with the frontend's own loader, laid out, and serialized exactly as "Save" would.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import comfy_env  # noqa: E402
from browser import comfy_page  # noqa: E402
from live_server import ComfyServer  # noqa: E402
from workflows.examples import EXAMPLES  # noqa: E402

OUT = comfy_env.REPO / "examples_workflows"

LAYOUT = """async ([api, name]) => {
  await window.app.loadApiJson(api, name);
  const g = window.app.graph;
  g.arrange?.(80);
  return JSON.stringify(g.serialize(), null, 1);
}"""


def main():
    import subprocess

    subprocess.run([sys.executable, "-c", "import comfy_env, tiny_models; comfy_env.import_comfy();"
                    "tiny_models.write_all(str(comfy_env.BASE / 'models'))"], cwd=HERE, check=True)
    server = ComfyServer().start()
    try:
        with comfy_page(server) as page:
            OUT.mkdir(exist_ok=True)
            for name, build in EXAMPLES.items():
                text = page.evaluate(LAYOUT, [build(), name])
                (OUT / f"{name}.json").write_text(text + "\n")
                print("wrote", OUT / f"{name}.json")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
