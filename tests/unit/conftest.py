"""The fast unit tier: the pure modules and the controllers, without ComfyUI. The pack is imported as a package on
its own; while this tier runs in a process that has not imported ComfyUI (`make test-unit`), importing any of
ComfyUI's modules fails, so a test that needs ComfyUI cannot slip in here."""

import importlib.abc
import sys

import pytest

from pack import COMFYUI_MODULES, import_pack_as


class _NoComfyUI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in COMFYUI_MODULES:
            raise ImportError(f"{name}: the unit tier runs without ComfyUI (move this test to tests/headless/)")
        return None


@pytest.fixture(scope="module", autouse=True)  # per module: tests run after this tier keep ComfyUI
def without_comfyui():
    """Blocks ComfyUI's modules for the unit tests when this process has not imported ComfyUI (when it has, the
    folder rule in test_layers.py still proves the pure folders never need it)."""
    blocker = None if "comfy" in sys.modules else _NoComfyUI()
    if blocker is not None:
        sys.meta_path.insert(0, blocker)
    yield
    if blocker is not None:
        sys.meta_path.remove(blocker)


@pytest.fixture(scope="session")
def leakless():
    """The pack as a package, without ComfyUI."""
    return import_pack_as("leakless")
