"""`make run` (tests/harness/run_comfyui.sh) as a new user starts it: no error banner, the pack loaded, the canvas
first (not the first-run Templates dialog), the pack's workflows in the Templates browser."""

import os
import signal
import subprocess
import time
import urllib.request

import comfy_env
import pytest
from live_server import free_port

from conftest import REPO

BANNERS = ("********** ERROR", "is not installed", "package not found", "Traceback", "IMPORT FAILED")

if comfy_env.COMFY_NAME != "0.3.75":
    pytestmark = pytest.mark.skip(reason="make run starts ComfyUI 0.3.75 (its test process runs this)")


def test_make_run_starts_without_an_error_banner():
    port = free_port()
    env = dict(os.environ, PORT=str(port), COMFY_ARGS="--disable-auto-launch", PYTHONUNBUFFERED="1")
    env.pop("COMFYUI_DIR", None)
    proc = subprocess.Popen(["bash", str(REPO / "tests" / "harness" / "run_comfyui.sh")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, deadline = [], time.time() + 240
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "To see the GUI go to" in line or time.time() > deadline:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/workflow_templates", timeout=30) as r:  # noqa: S310
            templates = r.read().decode()
        url = f"http://127.0.0.1:{port}/settings/Comfy.TutorialCompleted"
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - what the frontend reads at start
            tutorial_done = r.read().decode().strip() == "true"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    output = "\n".join(lines)
    assert "To see the GUI go to" in output, output[-3000:]
    assert not [b for b in BANNERS if b in output], output
    assert "model files go in" in output and "Browse Templates" in output
    assert '"leakless"' in templates and "token_inspector_flux" in templates
    assert tutorial_done  # the canvas opens first
