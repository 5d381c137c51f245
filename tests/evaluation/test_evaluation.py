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

from pack import REPO, import_pack_as

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


def cli_run(*args, check=True, background=False, timeout=300):
    """The command as a user runs it: python -m leakless.nodes.evaluation from ComfyUI's custom_nodes/."""
    cmd = [sys.executable, "-m", "leakless.nodes.evaluation", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, cwd=comfy_env.BASE / "custom_nodes", stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, cwd=comfy_env.BASE / "custom_nodes", capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def refused(*args, lines=1):
    """The CLI's refusal: exit status 2, `lines` lines on stderr (the first 'error: ...'), no traceback, within a
    minute (a hang fails). Returns stderr."""
    r = cli_run(*args, check=False, timeout=60)
    err = r.stderr.strip()
    assert r.returncode == 2 and "Traceback" not in err, r.stdout + r.stderr
    assert err.startswith("error: ") and len(err.splitlines()) == lines, err
    return err


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
    ("bad.jsonl", '{"prompt": "a cat", "entities": ["dog"]}\n', "entities ['dog'] are not whole words of the prompt"),
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


def test_marks_become_the_occurrences_they_mark(evaluation, tmp_path):
    """A mark on a repeated word names that occurrence, as DeLeaker Encode reads the mark ('cat#2')."""
    prompts = evaluation[1]
    rows = prompts.load(write_jsonl(tmp_path / "cats.jsonl", [{"prompt": "a **cat** chasing a **cat**"},
                                                               {"prompt": "a cat chasing a **cat**"}]))
    assert [r.entities for r in rows] == [("cat", "cat#2"), ("cat#2",)]


PHRASE_LISTS = ["cow, horse", "cat#2; dog", '"1984", "C#"#2', "golden gate bridge\nbats # 2", "a, , b", "1984",
                '"x', "@3", "cat#0", "#2", 'a"b"']
WORD_CASES = [("A cow and a horse", "ow"), ("A cow and a horse", "cow"), ("a cat, a CAT", "Cat"),
              ("a  big\ncat", "big cat"), ("a (red:1.2) cat", "red cat"), ("(red)(cat)", "red"),
              ("((red))cat", "redcat"),
              ("a \\(cat\\) here", "cat"), ("bats and baseball bats", "bats"), ("ice-cream cone", "cream"),
              ("the cat's toy", "cat"), ("catalog", "cat"), ("a (cow:bad) x", "cow"), ("1984 was a year", "1984"),
              ("a red cat", "red  cat")]


def test_the_row_check_reads_phrases_as_the_nodes_do(evaluation, tokenizers):
    """The runner's own reading (nodes/evaluation/phrases.py, no tokenizer) against the nodes': the same phrases
    from the same text, and a phrase found as often as the alignment on FLUX's and SDXL's tokenizers finds it."""
    from leakless.nodes.text import alignment, grammar
    from leakless.nodes.evaluation import phrases

    for text in PHRASE_LISTS:
        try:
            expected = [(r.phrase, r.occurrence) for r in grammar.parse_phrases(text, "entities")]
        except grammar.SelectionError:
            expected = "refused"
        try:
            got = [(p.text, p.occurrence) for p in phrases.parse(text)]
            assert [(p.text, p.occurrence) for p in phrases.parse(", ".join(map(str, phrases.parse(text))))] == got
        except phrases.PhraseError:
            got = "refused"
        assert got == expected, text
    for prompt, phrase in WORD_CASES:
        for family in ("flux", "sdxl"):
            found = len(alignment.align(prompt, tokenizers[family]).find_spans(phrase))
            assert phrases.count(prompt, phrase) == found, (prompt, phrase, family)


NOT_THERE = "127.0.0.1:9"  # nothing listens: every refusal below comes before a server is asked
DELEAKER = REPO / "examples_workflows" / "flux_deleaker.json"


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("files,message", [
    ({"rows.txt": b"a cow and a horse\n\xff\xfe a cat\n"}, "rows.txt: it is not UTF-8 text (byte 0xff"),
    ({"rows.csv": 'prompt\na cat\n"' + "a" * 200_000 + '"\n'}, "rows.csv line 3: not CSV (field larger than"),
    ({"rows.csv": 'prompt\n"a cat\n' + "a dog\n" * 30_000}, "rows.csv line 2: not CSV"),
    ({"wf.json": json.dumps({"1": {"class_type": "KSampler"}})}, "wf.json: node 1 has no 'inputs' object"),
    ({"wf.json": json.dumps({"1": {"class_type": "VAEDecode", "inputs": {"vae": ["7", 0]}}})},
     "input 'vae' links to ['7', 0], which is not a node output"),
    ({"wf.json": json.dumps({"nodes": [{"id": 1}], "links": []})}, "wf.json: a node ({'id': 1}) has no id or type"),
    ({"wf.json": b'{"nodes": [], "x": "\xff"}'}, "cannot read the workflow (UnicodeDecodeError"),
    ({"out/manifest.json": '{"fingerprint": "ab", "plan": {"rows": [{"id": "c'}, "manifest.json: it cannot be read "
     "(JSONDecodeError"),
    ({"out/manifest.json": '{"fingerprint": "ab", "done": []}'}, "it is JSON but not a manifest this runner wrote"),
])
def test_unreadable_files_are_refused_in_one_line(evaluation, tmp_path, files, message):
    """Files the runner cannot read give one line that names the file and the fix, exit status 2, before any
    server is asked; a damaged manifest is left as it is, with how to resume or start over."""
    (tmp_path / "out").mkdir()
    written = {name: _write(tmp_path / name, content) for name, content in files.items()}
    rows = written.get("rows.txt") or written.get("rows.csv") or write_jsonl(tmp_path / "cow.jsonl", [COW])
    err = refused(rows, written.get("wf.json", DELEAKER), "--server", NOT_THERE, "--out", tmp_path / "out")
    assert message in err, err
    if "out/manifest.json" in files:
        assert "give another --out" in err and "mv " in err
        assert written["out/manifest.json"].read_text() == files["out/manifest.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == (["manifest.json"] if "out/manifest.json" in
                                                                      files else [])


@pytest.mark.parametrize("option,value,message", [
    ("--jobs-per-server", "0", "--jobs-per-server: 0 is out of range. Fix: give a number from 1 to 64."),
    ("--jobs-per-server", "100000", "--jobs-per-server: 100000 is out of range."),
    ("--limit", "-1", "--limit: -1 is out of range. Fix: give a number from 0 up."),
    ("--retries", "-1", "--retries: -1 is out of range. Fix: give a number from 0 to 100."),
    ("--retries", "1000000", "--retries: 1000000 is out of range."),
    ("--give-up-after", "nan", "--give-up-after: nan is out of range. Fix: give a number from 0 to 86400."),
    ("--give-up-after", "inf", "--give-up-after: inf is out of range."),
    ("--give-up-after", "-1", "--give-up-after: -1.0 is out of range."),
    ("--seed", "-1", "--seed: -1 is out of range. Fix: give a number from 0 to 4294967295."),
    ("--seed", str(2**32), "--seed: 4294967296 is out of range."),
    ("--server", "127.0.0.1:99999", "--server 127.0.0.1:99999: not a server address."),
    ("--server", "ftp://127.0.0.1:21", "not a server address"),
    ("--out", "file", "it is a file. Fix: give a folder"),
])
def test_every_option_is_checked_before_anything_runs(evaluation, tmp_path, option, value, message):
    """--jobs-per-server 0 used to wait forever and --limit -1 to drop the last row: every numeric option has a
    range, checked first."""
    rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
    if option == "--out":
        value = _write(tmp_path / value, "a file")
    servers = [] if option == "--server" else ["--server", NOT_THERE]
    out = [] if option == "--out" else ["--out", tmp_path / "out"]
    err = refused(rows, DELEAKER, *servers, *out, option, value)
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_entities_that_are_parts_of_words_are_refused_with_every_such_row(evaluation, tmp_path):
    """'ow' is in 'cow' but is not a word of the prompt: DeLeaker Encode would refuse it in every job."""
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"id": "ok", "prompt": "A cow and a horse", "entities": "cow, horse"},
        {"id": "parts", "prompt": "A cow and a horse", "entities": "ow, orse"},
        {"id": "third", "prompt": "a cat and a cat", "entities": ["cat#3"]},
        {"id": "marked", "prompt": "a **ca**t"}])
    err = refused(rows, DELEAKER, "--server", NOT_THERE, "--out", tmp_path / "out", lines=5)
    assert err.startswith("error: rows.jsonl: 3 of 4 rows cannot run:"), err
    assert "rows.jsonl line 2: entities ['ow', 'orse'] are not whole words of the prompt 'A cow and a horse'" in err
    assert "rows.jsonl line 3: entities ['cat#3'] are not whole words" in err
    assert "rows.jsonl line 4: '**ca**' marks part of a word" in err and "line 1" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body", ["<html><body>It works!</body></html>", '{"detail": "Not Found"}'])
def test_a_server_that_is_not_comfyui_is_refused(evaluation, tmp_path, body):
    """Another program on the port (a web server answering 200 with a page, or with JSON of its own) is named as
    not ComfyUI, in one line."""
    from live_server import free_port

    site = tmp_path / "site"
    site.mkdir()
    (site / "object_info").write_text(body)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=site,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection("
                                         f"('127.0.0.1', {port}), 1)"], capture_output=True).returncode == 0, 30)
        rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
        err = refused(rows, DELEAKER, "--server", f"127.0.0.1:{port}", "--out", tmp_path / "out")
    finally:
        server.kill()
        server.wait()
    assert f"error: http://127.0.0.1:{port}: it answers, but not as ComfyUI does" in err, err
    assert "check the host and port" in err and not (tmp_path / "out").exists()


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


@pytest.mark.parametrize("args,message", [
    (["--sweep", "DeLeaker.alpha=1.0,1.0"], "DeLeaker.alpha=1.0,1.0: the value 1.0 is given twice"),
    (["--sweep", "DeLeaker.alpha=1.5,1.50"], "the value 1.5 is given twice"),
    (["--variants", "saved,off,saved"], "--variants: saved given twice"),
    (["--sweep", "DeLeaker.alpha=1.5", "--sweep", "61.alpha=2"], "61.alpha=2: it changes input 'alpha' of node 61, "
     "and so does DeLeaker.alpha=1.5"),
    (["--set", "DeLeaker.alpha=1.5", "--sweep", "DeLeaker.alpha=2,2.5"], "and so does DeLeaker.alpha=1.5"),
    (["--sweep", "DeLeaker.mask_threshold=" + ",".join(str(i / 10) for i in range(20)), "--sweep",
      "DeLeaker.alpha=" + ",".join(str(1 + i / 20) for i in range(20))], "402 variants"),
])
def test_variants_that_would_be_the_same_run_are_refused(evaluation, comfy_server, tmp_path, args, message):
    """A sweep with a value twice used to end '2/3 results' with exit status 0 and could never be completed by
    resuming (both variants had one name). Refused, like any input changed by two settings."""
    rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
    err = refused(rows, DELEAKER, "--server", comfy_server.url, "--out", tmp_path / "out", *SMALL, *args)
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_rows_the_workflow_cannot_run_are_refused_before_the_first_job(comfy_server, tmp_path):
    """The README's T2I-CompBench example has no entities, which DeLeaker Encode needs (at least two): every job
    used to fail after its retries. Now each such row is named, with why, before anything is queued; rows that fit
    run."""
    err = refused(EXAMPLE_PROMPTS / "compbench_style.txt", DELEAKER, "--server", comfy_server.url, "--out",
                  tmp_path / "out", lines=5)
    assert err.startswith("error: compbench_style.txt with flux_deleaker.json: 3 of 3 rows cannot run:"), err
    for line in (2, 3, 4):
        assert (f"compbench_style.txt line {line}: DeLeaker Encode (node 60): 0 entities given, it needs "
                "at least 2") in err
    assert not (tmp_path / "out").exists()
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        COW, {"id": "one", "prompt": "A **cow** in a farm"},
        {"id": "same", "prompt": "a cow", "entities": "cow, a cow"},
        {"id": "listed", "prompt": "a red book and a yellow vase", "entities": "book, vase"}])
    err = refused(rows, DELEAKER, "--server", comfy_server.url, "--out", tmp_path / "out", lines=4)
    assert "2 of 4 rows cannot run:" in err
    assert "rows.jsonl line 2: DeLeaker Encode (node 60): 1 entities given, it needs at least 2" in err
    assert "rows.jsonl line 3: DeLeaker Encode (node 60): 'cow' and 'a cow' share words" in err
    fitting = write_jsonl(tmp_path / "fitting.jsonl", [COW, {"id": "listed", "prompt": "a red book and a yellow vase",
                                                             "entities": "book, vase"}])
    r = cli_run(fitting, DELEAKER, "--server", comfy_server.url, "--out", tmp_path / "out", "--variants", "saved",
                *SMALL)
    assert "2/2 results" in r.stdout


def test_results_that_cannot_be_written_stop_the_run_and_are_kept_for_the_resume(comfy_server, tmp_path):
    """A job whose images cannot be written (a full disk; here a file where the images folder goes) stops the run
    with the reason, exit status 2; it used to vanish from the run, which then ended '0/2 results' with status 0.
    The same command resumes once the folder is writable."""
    rows = write_jsonl(tmp_path / "cow.jsonl", [COW])
    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("in the way")
    args = [rows, DELEAKER, "--server", comfy_server.url, "--out", out, *SMALL]
    r = cli_run(*args, check=False, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert f"error: {out}: cannot write job cow|" in r.stderr and "run the same command again" in r.stderr
    assert json.loads((out / "manifest.json").read_text())["done"] == {}
    (out / "images").unlink()
    assert "2/2 results" in cli_run(*args).stdout
