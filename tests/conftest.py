"""Shared fixtures. ComfyUI is imported once per test process, CPU only, from the cached test environment: the
version the matrix selected (tests/harness/comfy_env.py)."""

import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent / "harness"
sys.path.insert(0, str(HARNESS))

import comfy_env  # noqa: E402
from pack import import_pack_as  # noqa: E402, F401 - tests and benchmarks import it from here

REPO = comfy_env.REPO
OUTPUT = REPO / "test-output" / comfy_env.COMFY_NAME  # one folder per ComfyUI of the matrix


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported headless (the `nodes` module)."""
    return comfy_env.import_comfy()


@pytest.fixture(scope="session")
def leakless(comfy):
    import_pack_as("leakless")
    import leakless.nodes.text.alignment  # noqa: F401

    return sys.modules["leakless"]


@pytest.fixture(scope="session")
def tiny_models(comfy):
    import tiny_models

    return tiny_models.write_all(str(comfy_env.BASE / "models"))


@pytest.fixture(scope="session")
def comfy_nodes(comfy, tiny_models):
    """Built-in and custom nodes loaded through ComfyUI's own loader (the pack via base/custom_nodes/leakless)."""
    failed = comfy_env.load_all_nodes()
    return comfy, failed


@pytest.fixture(scope="session")
def tokenizers(comfy):
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.flux

    return {
        "sd15": comfy.sd1_clip.SD1Tokenizer(),
        "sdxl": comfy.sdxl_clip.SDXLTokenizer(),
        "flux": comfy.text_encoders.flux.FluxTokenizer(),
    }


@pytest.fixture(scope="session")
def output_dir():
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def comfy_server(tiny_models):
    """The real main.py on a free loopback port, with the pack and the tiny-model shim in custom_nodes."""
    from live_server import ComfyServer

    OUTPUT.mkdir(parents=True, exist_ok=True)
    srv = ComfyServer(log_path=OUTPUT / "server.log").start()
    yield srv
    srv.stop()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """At the very end: which tests were skipped, grouped by reason (each reason says how to enable them)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons[reason.removeprefix("Skipped: ")] = reasons.get(reason.removeprefix("Skipped: "), 0) + 1
    lines = [f"{count:4d} skipped: {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])]
    if lines:
        terminalreporter.section("Leakless: skipped tests and how to run them")
        for line in lines:
            terminalreporter.write_line(line)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "skipped.txt").write_text("\n".join(lines) + "\n")  # run_matrix.sh repeats it at the very end
