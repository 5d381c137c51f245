"""What Leakless knows about ComfyUI's models, as data (pure: never imports ComfyUI).

``families``: the text encoders a CLIP can be (tokenizer keys, where each encoder's rows sit in the CONDITIONING).
``models``: the diffusion models the sampling-time methods reach (how ComfyUI's model is recognised, its blocks,
patch size and the order of the tokens in its attention calls). ``layout``: where the tokens of one attention call
are, computed from a model's entry and what one model call holds. Adding a model family is an entry in these
files, its tiny model and a row of facts in the tests.
"""
