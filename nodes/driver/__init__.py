"""The ComfyUI driver: the only code that touches ModelPatcher, wrappers, transformer_options, the attention
override chain, per-run state and run results (patching.py), plus the CLIP glue, schema checks, the token picker's
route and the Templates browser's copy of the example workflows."""
