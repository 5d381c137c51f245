"""Test-only ComfyUI custom node: lets the standard loaders build tiny random-weight models.

Never shipped with Leakless. It acts only on .safetensors files whose metadata carries the key
``leakless.tiny`` (written by ``tests/harness/tiny_models.py``); every other file takes ComfyUI's own path.
Its output nodes (output_nodes.py) report what a conditioning, a tokenization or a latent holds, for headless tests.
"""

from .output_nodes import NODE_CLASS_MAPPINGS
from .tiny_patch import install

install()
__all__ = ["NODE_CLASS_MAPPINGS"]
