"""The layers of nodes/ (nodes/__init__.py): a folder rule, not a list. Every module under registry/, text/ and
methods/ imports no ComfyUI module, at any depth of the code, and only the layers below its own; each imports in a
fresh Python that cannot import ComfyUI at all."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pack import COMFYUI_MODULES

NODES = Path(__file__).resolve().parents[2] / "nodes"
# each pure folder, and the folders of nodes/ it may import (errors.py: the user-facing error types, pure)
PURE = {"registry": {"registry"}, "text": {"registry", "text", "errors"},
        "methods": {"registry", "text", "methods", "errors"}}


def modules(folder: str) -> list[Path]:
    return sorted((NODES / folder).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file: level 0 for absolute names, else relative to its package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
            if node.level and not node.module:  # from . import a, b
                found += [(node.level, alias.name) for alias in node.names]
    return found


def nodes_folder(path: Path, level: int, module: str) -> str:
    """The first part under nodes/ that a relative import of `path` reaches ('registry', 'errors', ...)."""
    package = path.parent
    for _ in range(level - 1):
        package = package.parent
    target = package.relative_to(NODES).parts + tuple(p for p in module.split(".") if p)
    return target[0] if target else ""


@pytest.mark.parametrize("folder", sorted(PURE))
def test_pure_folders_import_no_comfyui_and_only_lower_layers(folder):
    assert modules(folder), folder
    for path in modules(folder):
        for level, module in imports(path):
            if level == 0:
                assert module.split(".")[0] not in COMFYUI_MODULES, f"{path} imports {module}"
            else:
                reached = nodes_folder(path, level, module)
                assert reached in PURE[folder], f"{path} imports nodes/{reached} ({'.' * level}{module})"


def test_pure_folders_import_without_comfyui():
    names = [".".join(("leakless", *p.relative_to(NODES.parent).with_suffix("").parts)).replace(".__init__", "")
             for folder in PURE for p in modules(folder)]
    script = f"""
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {COMFYUI_MODULES!r}:
            raise ImportError("ComfyUI module " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("leakless", {str(NODES.parent / "__init__.py")!r},
                                              submodule_search_locations=[{str(NODES.parent)!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["leakless"] = pack; spec.loader.exec_module(pack)
for name in {names!r}:
    importlib.import_module(name)
print(len({names!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(names) >= 15
