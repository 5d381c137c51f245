"""Leakless nodes.

Algorithms live in plain PyTorch/Python modules that never import ComfyUI (``alignment``, one module per method);
the ComfyUI glue (V3 node classes, ModelPatcher hooks) lives in the ``*_nodes`` modules beside them, and
``extension`` lists every node the pack registers.
"""
