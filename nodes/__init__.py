"""Leakless nodes, in layers (each imports only the layers below it):

- ``registry/`` (pure): the model families, text encoders and attention layouts Leakless knows, as data;
- ``text/`` (pure): prompt <-> token alignment, the grammar of selections, phrases and groups, prompt tags;
- ``methods/`` (pure): each method's algorithm and, for the sampling-time ones, its per-run controller (a patch,
  ``methods/contract.py``);
- ``driver/``: the one ComfyUI driver (ModelPatcher, wrappers, the attention override, run state and results, CLIP
  encoding, schema checks, the server route and the Templates browser);
- the ``*_nodes`` modules: the V3 nodes (schema and execute), and ``extension``, the list ComfyUI registers.
The pure folders never import ComfyUI (tests/unit/test_layers.py holds them to it).
"""
