"""Long work shows in ComfyUI's own progress bar: the 'progress' messages the executor's server object receives
(comfy.utils.ProgressBar reports to it as main.py's hook makes it report to the real server)."""

import comfy_env
from workflows.examples import EXAMPLES, shrink


def progress_of(prompt, class_type):
    """Per progress-bar total: the values reported while `class_type`'s node executed, in order."""
    server = comfy_env.HeadlessServer()
    comfy_env.run_prompt(prompt, server=server)
    nodes = {k for k, v in prompt.items() if v["class_type"] == class_type}
    bars = {}
    for event, data in server.messages:
        if event == "progress" and data["node"] in nodes:
            bars.setdefault(data["max"], []).append(data["value"])
    return bars


def counts_up_to_its_total(values, total):
    """From 1 to `total`, never back (0.33.0's ProgressBar throttles the updates in between)."""
    return values[0] == 1 and values[-1] == total and values == sorted(values)


def test_tome_ticks_once_per_gradient_pass(comfy_nodes):
    prompt = shrink(EXAMPLES["sdxl_tome"](), size=128, steps=5)  # steps_fraction 0.2: one optimized step
    binding = next(v["inputs"] for v in prompt.values() if v["class_type"] == "LeaklessToMeSemanticBinding")
    encode = next(v["inputs"] for v in prompt.values() if v["class_type"] == "LeaklessToMeEncode")
    groups = len([g for g in encode["groups"].replace(";", "\n").splitlines() if g.strip()])
    semantic = binding["semantic_iterations"] * groups  # batch 1: one pass per group and iteration
    passes = semantic + binding["entropy_iterations"]
    bars = progress_of(prompt, "KSampler")
    assert counts_up_to_its_total(bars[passes], passes), bars
    assert 5 in bars  # the sampler's own steps still report


def test_deleaker_shows_its_mask_history_window(comfy_nodes):
    steps = 5
    prompt = shrink(EXAMPLES["flux_deleaker"](), size=128, steps=steps)
    history = round(next(v["inputs"]["mask_history"] for v in prompt.values()
                         if v["class_type"] == "LeaklessDeLeaker") * steps)
    sampler = next(v["class_type"] for v in prompt.values() if v["class_type"].startswith("SamplerCustom"))
    bars = progress_of(prompt, sampler)
    assert history != steps and counts_up_to_its_total(bars[history], history), bars


def test_token_trace_ticks_once_per_subset(comfy_nodes):
    prompt = shrink(EXAMPLES["flux_token_trace_grid"](), size=64, steps=1)
    bars = progress_of(prompt, "LeaklessTokenTrace")
    (total, values), = bars.items()
    trace = next(v["inputs"] for v in prompt.values() if v["class_type"] == "LeaklessTokenTrace")
    assert trace["mode"] == "each word" and total > 3 and counts_up_to_its_total(values, total), bars
