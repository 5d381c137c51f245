"""`make run` (tests/harness/run_comfyui.sh) as a new user starts it: the newest ComfyUI of the matrix that is built
(0.33.0, else 0.3.75 with a line saying why), no error banner, the pack loaded, the canvas first (not the first-run
Templates dialog), the pack's workflows in the Templates browser, and the path of every model file the examples
load."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import comfy_env
import pytest
from live_server import free_port

from pack import REPO

BANNERS = ("********** ERROR", "is not installed", "package not found", "Traceback", "IMPORT FAILED")
NEWEST = "0.33.0" if ((comfy_env.MATRIX["0.33.0"] / "main.py").is_file()
                      and (comfy_env.CACHE / "venv-0.33.0" / "bin" / "python").exists()) else "0.3.75"
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".sft", ".gguf")


def example_model_files() -> set[str]:
    """Every model file an example workflow names, in any node (read independently of run_comfyui.sh's list)."""
    files = set()
    for path in (REPO / "examples_workflows").glob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            values = node.get("widgets_values") or []
            files |= {v for v in (values.values() if isinstance(values, dict) else values)
                      if isinstance(v, str) and v.lower().endswith(MODEL_SUFFIXES)}
    return files


def make_run(env_extra: dict) -> tuple[str, dict]:
    """run_comfyui.sh's output up to the server's 'To see the GUI' line, and what the running server answers."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), COMFY_ARGS="--disable-auto-launch", PYTHONUNBUFFERED="1", **env_extra)
    env.pop("COMFYUI_DIR", None)
    proc = subprocess.Popen(["bash", str(REPO / "tests" / "harness" / "run_comfyui.sh")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, deadline, answers = [], time.time() + 240, {}
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "To see the GUI go to" in line or time.time() > deadline:
                break
        for key, path in (("templates", "/workflow_templates"), ("tutorial", "/settings/Comfy.TutorialCompleted"),
                          ("stats", "/system_stats")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:  # noqa: S310
                answers[key] = r.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    output = "\n".join(lines)
    assert "To see the GUI go to" in output, output[-3000:]
    assert not [b for b in BANNERS if b in output], output
    assert '"leakless"' in answers["templates"] and "token_inspector_flux" in answers["templates"]
    assert ".leakless-written" not in answers["templates"]  # the pack's record of its copies is no template
    assert answers["tutorial"].strip() == "true"  # the canvas opens first
    return output, answers


@pytest.mark.skipif(comfy_env.COMFY_NAME != NEWEST, reason=f"make run starts ComfyUI {NEWEST} (its test process "
                    "runs this)")
def test_make_run_starts_the_newest_comfyui_and_names_every_model_file_of_the_examples():
    output, answers = make_run({})
    assert f"starting ComfyUI {NEWEST} on" in output
    assert json.loads(answers["stats"])["system"]["comfyui_version"] == NEWEST
    listed = output[output.index("model files go in"):output.index("example workflows:")]
    files = example_model_files()
    assert {"flux1-dev.safetensors", "flux2_dev_fp8mixed.safetensors", "qwen_3_4b.safetensors"} <= files
    assert not [f for f in files if f"/{f}\n" not in listed + "\n"], listed


@pytest.mark.skipif(comfy_env.COMFY_NAME != "0.3.75" or NEWEST != "0.33.0",
                    reason="needs the 0.3.75 test process and a built 0.33.0 to stand for")
def test_make_run_without_0_33_0_starts_0_3_75_and_says_why(tmp_path):
    """A cache where 0.33.0 was never built (no source): 0.3.75 starts, and a line says why and how to get 0.33.0."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("venv", "comfyui", "frontend-newest", "mistral-common"):
        (cache / name).symlink_to(comfy_env.CACHE / name, target_is_directory=True)
    shutil.copy(comfy_env.CACHE / ".env-stamp", cache / ".env-stamp")
    # a user's machine, not CI: the missing 0.33.0 is a line, not an error (LEAKLESS_REQUIRE_MATRIX would refuse it)
    output, answers = make_run({"LEAKLESS_CACHE": str(cache), "LEAKLESS_COMFYUI_TARBALL": str(tmp_path / "none"),
                                "LEAKLESS_REQUIRE_MATRIX": "0"})
    assert "ComfyUI 0.33.0 is not built" in output and "run make env to get 0.33.0" in output
    assert "starting ComfyUI 0.3.75 on" in output
    assert json.loads(answers["stats"])["system"]["comfyui_version"] == "0.3.75"
