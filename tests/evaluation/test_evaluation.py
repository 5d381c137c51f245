"""The A/B evaluation runner (nodes/evaluation) against real ComfyUI servers on loopback with the tiny models:
UI-format conversion, bypass, resume across a killed server and a killed runner, judges, report, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import comfy_env
import numpy as np
import pytest
from browser import CHROMIUM_FLAGS, chromium_path
from PIL import Image
from workflows import graphs
from workflows.examples import EXAMPLES, shrink

from conftest import REPO, import_pack_as

EXAMPLE_PROMPTS = REPO / "nodes" / "evaluation" / "examples"
SMALL = ["--set", "EmptySD3LatentImage.width=64", "--set", "EmptySD3LatentImage.height=64",
         "--set", "ModelSamplingFlux.width=64", "--set", "ModelSamplingFlux.height=64",
         "--set", "BasicScheduler.steps=2"]
COW = {"id": "cow", "prompt": "A **cow** and a **horse** in a farm", "seed": 42}


@pytest.fixture(scope="module")
def evaluation(leakless):
    import_pack_as("leakless")
    import leakless.nodes.evaluation.__main__ as cli
    from leakless.nodes.evaluation import prompts, workflow

    return cli, prompts, workflow


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


@pytest.fixture(scope="module")
def second_server(comfy_server, output_dir):
    from live_server import ComfyServer

    server = ComfyServer(log_path=output_dir / "server-evaluation-second.log").start()
    yield server
    server.stop()


def cli_run(*args, check=True, background=False):
    """The command as a user runs it: python -m leakless.nodes.evaluation from ComfyUI's custom_nodes/."""
    cmd = [sys.executable, "-m", "leakless.nodes.evaluation", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, cwd=comfy_env.BASE / "custom_nodes", stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, cwd=comfy_env.BASE / "custom_nodes", capture_output=True, text=True, timeout=300)
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def history_image(server, outputs, node="9"):
    import urllib.parse
    import urllib.request

    image = outputs[node]["images"][0]
    with urllib.request.urlopen(f"{server.url}/view?{urllib.parse.urlencode(image)}") as r:  # noqa: S310
        return np.asarray(Image.open(__import__("io").BytesIO(r.read())).convert("RGB"))


def deleaker_api_graph():
    """The official FLUX graph with Leakless DeLeaker between ModelSamplingFlux and the guider (API format)."""
    g = graphs.flux_dev(width=32, height=32, steps=1)
    g["61"] = {"class_type": "LeaklessDeLeaker", "inputs": {
        "model": ["30", 0], "mask_threshold": 1.0, "image_threshold": 1.0, "alpha": 1.2, "mask_history": 0.6,
        "cross_text": True, "self_text": True, "image_image": True, "alpha_per_pair": False, "overlap": "reference"}}
    g["22"]["inputs"]["model"] = ["61", 0]
    return g


def test_the_runner_never_imports_comfyui_or_torch():
    """It runs beside ComfyUI, in any Python with aiohttp and Pillow: the servers do the work."""
    import ast

    banned = {"torch", "comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths", "server", "execution"}
    for path in (REPO / "nodes" / "evaluation").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & banned, f"{path.name} imports {roots & banned}"


# --- prompt sets -------------------------------------------------------------------------------------------------

def test_example_prompt_sets_load_in_every_format(evaluation):
    _, prompts, _ = evaluation
    jsonl = prompts.load(EXAMPLE_PROMPTS / "slim_style.jsonl")
    assert jsonl[0].entities == ("cow", "horse") and jsonl[0].seed == 42 and jsonl[0].clean.startswith("A cow and")
    assert jsonl[2].entities == ("bat", "baseball player")
    table = prompts.load(EXAMPLE_PROMPTS / "slim_style.csv")
    assert [r.entities for r in table] == [("cow", "horse"), ("lion", "zebra"), ("owl", "fox")]
    text = prompts.load(EXAMPLE_PROMPTS / "compbench_style.txt", base_seed=5)
    assert len(text) == 3 and text[0].prompt == "a red book and a yellow vase"
    assert [r.seed for r in text] == [r.seed for r in prompts.load(EXAMPLE_PROMPTS / "compbench_style.txt", 5)]
    assert len({r.seed for r in text}) == 3


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", '{"prompt": "a cat"}\n{"prompt": "a dog", \n', "bad.jsonl line 2: not JSON"),
    ("bad.jsonl", '{"text2": "a cat"}\n', "line 1: the row has no 'prompt'"),
    ("bad.jsonl", '{"prompt": "a cat", "seed": "x"}\n', "'seed' is 'x'"),
    ("bad.jsonl", '{"prompt": "a cat", "entities": ["dog"]}\n', "entities ['dog'] are not words of the prompt"),
    ("bad.csv", "prompt,seed\na cat,1,2\n", "bad.csv line 2: the row has more fields"),
    ("bad.csv", "words,seed\na cat,1\n", "start the file with a header"),
    ("bad.jsonl", '{"id": "a", "prompt": "a cat"}\n{"id": "a", "prompt": "a dog"}\n', "row ids ['a']"),
    ("bad.yaml", "prompt: a cat\n", "unknown prompt-set format"),
])
def test_malformed_prompt_sets_are_refused_before_anything_is_written(evaluation, tmp_path, capsys, name, content,
                                                                       message):
    cli = evaluation[0]
    (tmp_path / name).write_text(content)
    out = tmp_path / "out"
    code = cli.main([str(tmp_path / name), str(REPO / "examples_workflows" / "flux_deleaker.json"),
                     "--server", "127.0.0.1:9", "--out", str(out)])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


# --- workflows ---------------------------------------------------------------------------------------------------

def test_ui_format_converts_like_the_api_definitions(evaluation, object_info):
    """Every shipped UI-format workflow converts to the API graph it was generated from (tests/workflows/examples),
    plus the optional widgets the frontend also sends with their defaults."""
    workflow = evaluation[2]
    for name, make in EXAMPLES.items():
        converted = workflow.load(REPO / "examples_workflows" / f"{name}.json", object_info)
        expected = make()
        assert sorted(converted) == sorted(expected), name
        for node_id, node in expected.items():
            got = converted[node_id]
            assert got["class_type"] == node["class_type"]
            extra = {k: v for k, v in got["inputs"].items() if k not in node["inputs"]}
            assert {k: got["inputs"][k] for k in node["inputs"]} == node["inputs"], (name, node_id)
            optional = object_info[node["class_type"]]["input"].get("optional", {})
            defaults = {k: spec[1].get("default", spec[0][0] if isinstance(spec[0], list) else None)
                        for k, spec in optional.items()}
            assert all(v == defaults[k] for k, v in extra.items()), (name, node_id, extra)


def test_ui_bypass_feeds_each_output_from_its_first_input_of_that_type(evaluation, object_info):
    workflow = evaluation[2]
    ui = json.loads((REPO / "examples_workflows" / "flux_deleaker.json").read_text())
    for node in ui["nodes"]:
        if node["id"] in (61, 62):
            node["mode"] = 4  # the UI's bypass (Ctrl+B)
    api = workflow.ui_to_api(ui, object_info)
    assert "61" not in api and "62" not in api
    assert api["22"]["inputs"]["model"] == ["30", 0]  # DeLeaker's MODEL output from its model input
    assert api["63"]["inputs"]["images"] == ["8", 0]  # DeLeaker Masks' IMAGE output from its images input
    off, notes = workflow.method_off(workflow.ui_to_api(json.loads(
        (REPO / "examples_workflows" / "flux_deleaker.json").read_text()), object_info), object_info)
    assert off == api and notes == ["60 LeaklessDeLeakerEncode kept: an output it feeds has no input of its type"]


def test_off_variant_is_bit_identical_to_the_plain_graph_and_saved_to_a_direct_run(comfy_server, second_server,
                                                                                  tmp_path):
    """The runner's images on one server; the plain FLUX graph and the saved workflow queued directly on another
    (a fresh cache, so both really run)."""
    rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
    out = tmp_path / "out"
    cli_run(rows, REPO / "examples_workflows" / "flux_deleaker.json", "--server", comfy_server.url, "--out", out,
            *SMALL)
    done = json.loads((out / "manifest.json").read_text())["done"]
    plain = graphs.flux_dev(prompt="A cow and a horse in a farm", seed=42)
    saved = shrink(EXAMPLES["flux_deleaker"]())
    saved["60"]["inputs"].update(text="A cow and a horse in a farm", entities="cow, horse")
    saved["25"]["inputs"]["noise_seed"] = 42
    off_image = pixels(out / done["cow|off"]["images"][0])
    assert np.array_equal(off_image, history_image(second_server, second_server.run(plain)))
    assert np.array_equal(pixels(out / done["cow|saved"]["images"][0]), history_image(second_server,
                                                                                      second_server.run(saved)))
    assert np.array_equal(pixels(out / done["cow|off"]["images"][1]), off_image)  # Masks bypassed: SaveImage 63
    sent = json.loads((out / "manifest.json").read_text())["plan"]["variants"]
    assert {"60", "61", "62"} <= set(sent["saved"]) and not {"61", "62"} & set(sent["off"])


# --- scheduling, resume ------------------------------------------------------------------------------------------

def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError


def done_count(out):
    try:
        return len(json.loads((out / "manifest.json").read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_two_servers_one_killed_and_restarted_then_the_runner_killed_and_resumed(comfy_server, second_server,
                                                                                 tmp_path):
    """20 prompts x 3 variants over two servers: the second is killed by its PID mid-run (the first takes its jobs)
    and restarted while the first is frozen (SIGSTOP: only the restarted one can make progress), then the runner
    itself is killed; the resumed run ends with every result exactly once."""
    api = tmp_path / "deleaker_api.json"
    api.write_text(json.dumps(deleaker_api_graph()))
    rows = tmp_path / "twenty.txt"
    rows.write_text("".join(f"a cow and a horse in farm number {i}\n" for i in range(20)))
    out = tmp_path / "out"
    args = [rows, api, "--server", comfy_server.url, "--server", second_server.url, "--out", out,
            "--sweep", "DeLeaker.alpha=1.5", "--give-up-after", "600"]
    runner = cli_run(*args, background=True)
    try:
        wait_for(lambda: done_count(out) >= 6)
        second_server.kill()
        wait_for(lambda: done_count(out) >= 12)
        os.kill(comfy_server.proc.pid, signal.SIGSTOP)
        try:
            frozen_at = done_count(out)
            second_server.start()
            wait_for(lambda: done_count(out) >= frozen_at + 12, timeout=300)
        finally:
            os.kill(comfy_server.proc.pid, signal.SIGCONT)
        wait_for(lambda: done_count(out) >= 40)
        runner.kill()
    finally:
        runner.kill()
        first_log = runner.communicate()[0]
    stopped_at = done_count(out)
    assert 40 <= stopped_at < 60, first_log
    resumed = cli_run(*args)
    assert "60/60 results" in resumed.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    expected = {f"{i + 1:04d}|{v}" for i in range(20) for v in ("off", "saved", "DeLeaker.alpha=1.5")}
    assert set(manifest["done"]) == expected
    images = [p for r in manifest["done"].values() for p in r["images"]]
    assert len(images) == len(set(images)) == 60
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert on_disk == set(images)
    assert all(pixels(out / p).shape == (32, 32, 3) for p in images)
    assert any("lost" in e for e in manifest["events"]) and any("back after" in e for e in manifest["events"])
    assert {r["server"] for r in manifest["done"].values()} == {comfy_server.url, second_server.url}
    with open(out / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 60
    assert len(list((out / "side_by_side").glob("*.png"))) == 20


# --- judges, report ----------------------------------------------------------------------------------------------

STUB_JUDGE = """import json, sys
VERDICTS = {verdicts!r}
job = json.load(sys.stdin)
open(job["image"], "rb").close()
print(json.dumps({{"leak": VERDICTS[job["row"]["id"] + "|" + job["variant"]], "score": len(job["row"]["entities"])}}))
"""


def test_command_judge_scores_tallies_and_the_report_in_chromium(comfy_server, tmp_path, output_dir):
    verdicts = {"cow-horse|off": True, "cow-horse|saved": False, "cat-dog|off": True, "cat-dog|saved": True,
                "bat-player|off": False, "bat-player|saved": False}
    judge = tmp_path / "judge.py"
    judge.write_text(STUB_JUDGE.format(verdicts=verdicts))
    out = tmp_path / "out"
    cli_run(EXAMPLE_PROMPTS / "slim_style.jsonl", REPO / "examples_workflows" / "flux_deleaker.json", "--server",
            comfy_server.url, "--out", out, "--judge-command", f"{sys.executable} {judge}", *SMALL)
    with open(out / "scores.csv") as f:
        scores = {f"{r['id']}|{r['variant']}": r for r in csv.DictReader(f)}
    assert {k: r["leak"] == "True" for k, r in scores.items()} == verdicts
    assert scores["bat-player|off"]["score.score"] == "2"
    if chromium_path() is None:
        if os.environ.get("LEAKLESS_REQUIRE_BROWSER") == "1":
            raise RuntimeError("the report check needs Chromium here")
        pytest.skip("Chromium not found (apt-get install chromium, or set LEAKLESS_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto((out / "report.html").as_uri())
            page.wait_for_load_state("load")
            ids = page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => r.dataset.id)")
            assert ids == ["cow-horse", "cat-dog", "bat-player"]
            loaded = page.eval_on_selector_all("#results img", "is => is.map(i => i.complete && i.naturalWidth)")
            assert len(loaded) == 6 and all(w == 64 for w in loaded)
            tally = page.inner_text("#tallies")
            assert "off\t3/3\t2\t1\t0" in tally and "saved\t3/3\t1\t2\t0" in tally
            page.fill("#filter", "horse")
            assert page.eval_on_selector_all("#results tbody tr:not([hidden])", "rs => rs.length") == 1
            page.fill("#filter", "")
            page.click("th[data-key=leaks]")
            assert page.eval_on_selector_all("#results tbody tr", "rs => rs[0].dataset.id") == "bat-player"
            page.screenshot(path=str(output_dir / "evaluation-report.png"), full_page=True)
        finally:
            browser.close()


def judge_graph():
    """Core nodes on the tiny models: the image through the tiny VAE, and an 'answer' that repeats the question
    after 'no' (a real judge would run a vision-language model here)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}, "_meta": {"title": "Latent"}},
        "5": {"class_type": "StringConcatenate", "inputs": {"string_a": "No.", "string_b": "{question}",
                                                             "delimiter": " "}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}, "_meta": {"title": "Answer"}},
    }


def test_graph_judge_asks_each_entity_pair_and_tallies(comfy_server, tmp_path):
    rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
    judge = tmp_path / "judge.json"
    judge.write_text(json.dumps(judge_graph()))
    out = tmp_path / "out"
    cli_run(rows, REPO / "examples_workflows" / "flux_deleaker.json", "--server", comfy_server.url, "--out", out,
            "--judge-graph", judge, *SMALL)
    done = json.loads((out / "manifest.json").read_text())["done"]
    for key in ("cow|off", "cow|saved"):
        answers = done[key]["judge"]["answers"]
        assert [a["verdict"] for a in answers] == ["no", "no"]
        assert "the cow in this image show visual features of a horse" in answers[0]["answer"]
        assert "the horse in this image show visual features of a cow" in answers[1]["answer"]
        assert done[key]["judge"]["leak"] is False
    assert "<td>off</td><td>1/1</td><td>0</td><td>1</td>" in (out / "report.html").read_text()


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_workflows_sweeps_and_servers_give_a_message_and_write_nothing(evaluation, comfy_server, tmp_path,
                                                                           capsys):
    cli = evaluation[0]
    rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(graphs.flux_dev()))
    deleaker = str(REPO / "examples_workflows" / "flux_deleaker.json")
    cases = [
        ([deleaker, "--sweep", "Nope.alpha=1,2"], "no node of the workflow is called 'Nope'"),
        ([deleaker, "--sweep", "DeLeaker.nope=1,2"], "LeaklessDeLeaker has no input 'nope'"),
        ([deleaker, "--sweep", "DeLeaker.alpha=9"], "'9' is outside 1.0..3.0"),
        ([deleaker, "--variants", "maybe"], "maybe: unknown variant"),
        ([str(plain)], "it has no Leakless node"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        code = cli.main([str(rows), args[0], "--server", comfy_server.url, "--out", str(out), *args[1:]])
        assert code == 2 and message in capsys.readouterr().err, args
        assert not out.exists()
    from live_server import free_port

    down = f"127.0.0.1:{free_port()}"
    code = cli.main([str(rows), deleaker, "--server", comfy_server.url, "--server", down, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"http://{down}: the server does not answer" in err and "leave it out of --server" in err
    assert not out.exists()
