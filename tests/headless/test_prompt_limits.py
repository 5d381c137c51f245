"""The prompt side's bounds (issue 26): Token Trace's batched conditioning stays within its memory budget, a Trace
Grid label of any length is laid out in bounded time, and ComfyUI's interrupt (the flag POST /interrupt sets) stops
Token Trace and Trace Grid in the middle of their loops. The count and length limits of every input are rows of
the bad-input table (tests/workflows/bad_inputs.py), run headless and through the real server."""

import sys
import time

import comfy_env
import pytest
import torch


@pytest.fixture(scope="module")
def m(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    return nodes.NODE_CLASS_MAPPINGS


def module_of(cls):
    """The module a node class was loaded in (ComfyUI's loader names the pack by its path)."""
    return sys.modules[cls.__module__]


@pytest.fixture(scope="module")
def sdxl_clip(m):
    return m["CheckpointLoaderSimple"]().load_checkpoint("sd_xl_base_1.0.safetensors")[1]


def trace(m, clip, **inputs):
    values = dict(text="a red cat and a blue dog", mode="each word", selection="", include_full_prompt=True,
                  pooled_output="reference")
    return m["LeaklessTokenTrace"].execute(clip=clip, **{**values, **inputs}).args


def test_token_trace_refuses_a_batch_over_its_memory_budget(m, sdxl_clip, monkeypatch):
    """The conditioning batch of the subsets is counted after the prompt's one encoding, before it is built: at
    most the budget (4 GiB; here lowered to a few subsets' worth of the tiny model's rows)."""
    cond, _, count = trace(m, sdxl_clip)
    per_subset = cond[0][0][0].numel() * cond[0][0].element_size()
    monkeypatch.setattr(module_of(m["LeaklessTokenTrace"]), "MAX_TRACE_BYTES", 3 * per_subset)
    assert trace(m, sdxl_clip, mode="selection", selection="cat\ndog", include_full_prompt=False)[2] == 2
    with pytest.raises(ValueError, match=rf"input 'mode': its {count} subsets make a conditioning batch of "
                       r"[0-9.]+ [KMG]iB .* at most [0-9.]+ [KMG]iB\. Fix: trace fewer subsets"):
        trace(m, sdxl_clip)


@pytest.mark.timeout(120)
def test_a_100000_character_label_is_laid_out_in_bounded_time(m):
    """Only what fits in three lines is measured: a 100,000-character word takes as long as a short one (it took
    hours: the cut measured the whole word once per character dropped)."""
    images = torch.rand(1, 16, 16, 3)
    start = time.perf_counter()
    (grid,) = m["LeaklessTraceGrid"].execute(images=images, labels="x" * 100_000, columns=0, font_size=20).args
    assert time.perf_counter() - start < 5
    assert grid.shape == (1, 16 + 24 + 8, 16, 3)  # one line: the word cut with '…'
    words = " ".join(["a"] * 20_000)  # 20,000 short words: three lines, the last ending in '…'
    (grid,) = m["LeaklessTraceGrid"].execute(images=torch.rand(1, 64, 64, 3), labels=words, columns=0,
                                             font_size=8).args
    assert grid.shape == (1, 64 + 3 * 12 + 8, 64, 3)


class InterruptingServer(comfy_env.HeadlessServer):
    """The executor's server object, which presses Cancel (sets ComfyUI's interrupt flag, as POST /interrupt does)
    at the first progress update of `node`."""

    def __init__(self, node: str):
        super().__init__()
        self.node, self.values = node, []

    def send_sync(self, event, data, sid=None):
        super().send_sync(event, data, sid)
        if event == "progress" and data["node"] == self.node:
            import comfy.model_management

            self.values.append((data["value"], data["max"]))
            if len(self.values) == 1:
                comfy.model_management.interrupt_current_processing()


def interrupted_run(graph, node: str) -> InterruptingServer:
    server = InterruptingServer(node)
    with pytest.raises(comfy_env.ExecutionFailed):
        comfy_env.run_prompt(graph, server=server)
    events = [event for event, _ in server.messages]
    assert "execution_interrupted" in events and "execution_success" not in events, events
    return server


def test_interrupt_stops_token_trace_while_it_reads_the_selection(m, sdxl_clip, monkeypatch):
    """Cancel pressed while Token Trace finds the selection's phrases (up to 1,024, each a search of a prompt of up
    to 100,000 characters: seconds; ComfyUI's own checks, in its text encoders and its progress hook, come only
    before or after): it stops at the next line."""
    import comfy.model_management

    grammar = module_of(m["LeaklessTokenTrace"]).grammar
    resolve, resolved = grammar.resolve_refs, []

    def resolve_then_cancel(*args):
        resolved.append(args[2])
        if len(resolved) == 2:
            comfy.model_management.interrupt_current_processing()  # what POST /interrupt does
        return resolve(*args)

    monkeypatch.setattr(grammar, "resolve_refs", resolve_then_cancel)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            trace(m, sdxl_clip, mode="selection", selection="cat\ndog\nred\nblue", include_full_prompt=False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(resolved) == 2


def test_interrupt_stops_trace_grid_between_images(comfy_nodes):
    graph = {"img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 64,
                                                            "color": 0}},
             "labels": {"class_type": "PrimitiveString", "inputs": {"value": "a label"}},
             "x": {"class_type": "LeaklessTraceGrid", "inputs": {"images": ["img", 0], "labels": ["labels", 0],
                                                                  "columns": 0, "font_size": 8}},
             "out": {"class_type": "PreviewImage", "inputs": {"images": ["x", 0]}}}
    server = interrupted_run(graph, "x")
    done, total = server.values[-1]
    assert total == 64 and done < total, server.values
