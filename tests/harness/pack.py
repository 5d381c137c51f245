"""The pack as an importable package, whatever its folder is called (a user clones it under any name)."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "harness"
# ComfyUI's top-level modules: the unit tier blocks them; the folder rule proves the pure layers never import them
COMFYUI_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "execution",
                   "server", "node_helpers", "latent_preview", "comfyui_version")


def import_pack_as(name="leakless"):
    """Import the checkout as package `name` (once per process); ComfyUI is not needed for its pure modules."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
