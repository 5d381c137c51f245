"""The example workflows shipped in examples_workflows/, defined once as API graphs.

`tests/harness/export_workflows.py` loads each graph into the real frontend and saves the UI-format file the
frontend produces; the browser test loads those files back, converts them to API prompts and runs them.
Shipped settings are the official ones (1024 px, 20 steps); tests shrink sizes and steps only.
"""

from . import graphs

PROMPT_NODE = "50"


def _shared_prompt(graph, text_nodes, text, title="Prompt"):
    """One multiline prompt node feeding every `text` input, so the user types the prompt once."""
    graph[PROMPT_NODE] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": text},
                          "_meta": {"title": title}}
    for node_id in text_nodes:
        graph[node_id]["inputs"]["text"] = [PROMPT_NODE, 0]
    return graph


def token_inspector_flux():
    g = graphs.with_token_inspector(graphs.flux_dev(width=1024, height=1024, steps=20), ["11", 0], "")
    return _shared_prompt(g, ["6", "100"], graphs.PROMPT)


def token_inspector_sdxl():
    g = graphs.with_token_inspector(graphs.sdxl_default(width=1024, height=1024, steps=20), ["4", 1], "")
    return _shared_prompt(g, ["6", "100"], "a photo of a cat wearing sunglasses and a dog wearing a (red hat:1.2)",
                          title="Positive prompt")


EXAMPLES = {
    "token_inspector_flux": token_inspector_flux,
    "token_inspector_sdxl": token_inspector_sdxl,
}


def shrink(api_prompt, size=64, steps=2):
    """The test substitution: small sizes and few steps, everything else as the workflow has it."""
    for node in api_prompt.values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int):
                inputs[key] = size
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
    return api_prompt
