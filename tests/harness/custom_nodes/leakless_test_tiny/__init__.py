"""Test-only ComfyUI custom node: lets the standard loaders build tiny random-weight models.

Never shipped with Leakless. It acts only on .safetensors files whose metadata carries the key
``leakless.tiny`` (written by ``tests/harness/tiny_models.py``); every other file takes ComfyUI's own path.
"""

from .tiny_patch import install

install()
NODE_CLASS_MAPPINGS = {}
