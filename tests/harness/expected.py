"""What the pack must register. Node ids and their ordered input ids are pinned: saved workflows depend on them,
so a released id or input order never changes (add new inputs at the end, as optional)."""

SCHEMAS = {
    "LeaklessTokenInspector": ["clip", "text"],
    "LeaklessTokenTrace": ["clip", "text", "mode", "selection", "include_full_prompt", "pooled_output",
                           "empty_prompt"],
    "LeaklessTraceGrid": ["images", "labels", "columns", "font_size"],
    "LeaklessRedundantTokenMask": ["clip", "text", "mode", "items", "classifier", "threshold", "pooled_output",
                                   "empty_prompt"],
    "LeaklessLeakPatch": ["clip", "text", "items", "conditioning"],
    "LeaklessDeLeakerEncode": ["clip", "text", "entities"],
    "LeaklessDeLeaker": ["model", "mask_threshold", "image_threshold", "alpha", "mask_history", "cross_text",
                         "self_text", "image_image", "alpha_per_pair", "overlap", "entities"],
    "LeaklessDeLeakerMasks": ["masks", "images", "opacity", "samples"],
    "LeaklessHeatmapEncode": ["clip", "text", "words"],
    "LeaklessAttentionHeatmap": ["model", "entities", "start_percent", "end_percent", "first_block", "last_block"],
    "LeaklessHeatmapShow": ["heatmaps", "images", "opacity", "samples"],
    "LeaklessToMeEncode": ["clip", "text", "groups", "noun_weight", "attribute_weight", "end_token_substitution",
                           "clean_prompt"],
    "LeaklessToMeSemanticBinding": ["model", "binding", "steps_fraction", "entropy_iterations",
                                    "semantic_iterations", "semantic_lr", "entropy_step", "pose_prior",
                                    "semantic_latent", "threshold_schedule"],
}
EXPECTED_NODE_IDS = sorted(SCHEMAS)
