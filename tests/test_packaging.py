"""Packaging promises: registry metadata, lint and security rules, light imports, docs and examples per node."""

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from expected import EXPECTED_NODE_IDS

from pack import HARNESS, REPO



def test_ruff_clean_with_the_registry_security_rules():
    for args in (["check", "."], ["check", "--select", "S102,S307,E702", "."]):
        r = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_pyproject_is_registry_ready():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] == "leakless" and "comfyui" not in project["name"].lower()
    major, minor, patch = project["version"].split(".")
    assert all(x.isdigit() for x in (major, minor, patch))
    assert project["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").exists()
    assert project["requires-python"] == ">=3.10" and project["description"]
    assert project["urls"]["Repository"].startswith("https://")
    assert project["classifiers"] == ["Operating System :: OS Independent"]  # every OS and accelerator, CPU included
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    assert comfy["requires-comfyui"] == ">=0.3.75"
    assert "web" not in comfy  # WEB_DIRECTORY registers js/; both would list every script twice


def test_comfyuis_own_pyproject_parser_reads_every_registry_field(comfy):
    """comfy_config (ComfyUI's parser of a pack's pyproject.toml, the registry's field names) reads what the
    registry needs; the name follows the registry's rules (docs.comfy.org/registry/specifications)."""
    import re

    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(REPO))
    project, comfy_meta = config.project, config.tool_comfy
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?![-_.])){0,98}", project.name)
    assert project.license.file == "LICENSE" and project.description and project.dependencies == []
    assert project.urls.repository.startswith("https://") and project.urls.issues.startswith("https://")
    assert project.supported_comfyui_version == ">=0.3.75"
    # supported_accelerators empty: the frontend's Manager reads that as every accelerator (systemCompatibility.ts)
    assert project.supported_os == ["OS Independent"] and project.supported_accelerators == []
    assert comfy_meta.publisher_id == "leakless" and comfy_meta.display_name == "Leakless"
    assert comfy_meta.icon.startswith("https://") and comfy_meta.web is None and comfy_meta.includes == []


def test_requirements_add_nothing_comfyui_ships():
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln and not ln.startswith("#")] == []


def test_entry_point_only():
    """The pack's __init__.py imports nothing at import time (the pure folders' rule: tests/unit/test_layers.py)."""
    init = ast.parse((REPO / "__init__.py").read_text())
    top_imports = [n for n in init.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top_imports == []


def test_pack_loads_in_well_under_a_second():
    """Time ComfyUI's own load_custom_node on the pack in a fresh process. Excluded: importing ComfyUI, and its
    pyproject parser (pydantic-settings, about 0.2 s), which ComfyUI imports for the first pack it loads."""
    code = (
        "import asyncio, time, comfy_env; n = comfy_env.import_comfy(); import comfy_config.config_parser;"
        "t = time.perf_counter();"
        "ok = asyncio.run(n.load_custom_node(str(comfy_env.BASE / 'custom_nodes' / 'leakless')));"
        "print(ok, time.perf_counter() - t)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=HARNESS, capture_output=True, text=True, timeout=300)
    ok, seconds = r.stdout.strip().splitlines()[-1].split()
    assert ok == "True", r.stderr[-2000:]
    assert float(seconds) < 0.3, f"pack import took {seconds} s"


def test_every_node_is_documented_and_shown_in_an_example():
    readme = (REPO / "README.md").read_text()
    used = set()
    for path in (REPO / "examples_workflows").glob("*.json"):
        used |= {n["type"] for n in json.loads(path.read_text())["nodes"]}
    for node_id in EXPECTED_NODE_IDS:
        assert node_id in readme, f"{node_id} missing from README.md"
        assert node_id in used, f"{node_id} used by no workflow in examples_workflows/"


def _ignored(paths: list[str]) -> set[str]:
    """Which of `paths` .gitignore or .comfyignore exclude (git matches the patterns, as gitwildmatch does)."""
    r = subprocess.run(
        ["git", "-c", f"core.excludesFile={REPO / '.comfyignore'}", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO, input="\n".join(paths), capture_output=True, text=True)
    return set(r.stdout.splitlines())


def published_files() -> list[str]:
    """The files `comfy node pack` puts in the registry archive: a walk of the pack folder without .git, minus
    what .gitignore and .comfyignore exclude."""
    top = [p.name + "/" if p.is_dir() else p.name for p in REPO.iterdir() if p.name != ".git"]
    kept_top = [name for name in top if name not in _ignored(top)]
    walked = [name for name in kept_top if not name.endswith("/")]
    for name in kept_top:
        if name.endswith("/"):
            walked += [p.relative_to(REPO).as_posix() for p in (REPO / name).rglob("*") if p.is_file()]
    return sorted(set(walked) - _ignored(walked))


def test_registry_archive_holds_the_pack_and_no_test_caches(tmp_path):
    import zipfile

    files = published_files()
    archive = tmp_path / "node.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in files:
            z.write(REPO / name, name)
    names = set(zipfile.ZipFile(archive).namelist())
    for required in ("__init__.py", "pyproject.toml", "LICENSE", "README.md", "CHANGELOG.md", "requirements.txt",
                     "icon.svg", "js/leakless.js", "nodes/extension.py", "nodes/methods/tome.py"):
        assert required in names, required
    assert {f"js/docs/{node_id}.md" for node_id in EXPECTED_NODE_IDS} <= names
    assert any(n.startswith("examples_workflows/") for n in names)
    for name in names:
        assert not name.startswith((".cache/", "test-output/", "tests/", "bench/", ".ci/", "docs/")), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
    assert archive.stat().st_size < 1_000_000


def test_example_workflows_name_the_pack_their_nodes_need():
    """Someone who opens a shared workflow without Leakless is told what to install from each node's
    properties.cnr_id (the registry id) and properties.ver, as ComfyUI-Manager writes them on a known pack's nodes
    (js/workflow-metadata.js) and the frontend reads them (workflowSchema.ts, useWorkflowPacks.ts): every Leakless
    node of every example carries pyproject's name and version, in the frontend's formats."""
    import re

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9._-]*[a-zA-Z0-9])?", project["name"])  # the frontend's zCnrId
    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", project["version"])  # its zSemVer
    for path in sorted((REPO / "examples_workflows").glob("*.json")):
        nodes = json.loads(path.read_text())["nodes"]
        ours = [n for n in nodes if n["type"] in EXPECTED_NODE_IDS]
        assert ours, path.name
        for node in ours:
            source = {k: node.get("properties", {}).get(k) for k in ("cnr_id", "ver")}
            assert source == {"cnr_id": project["name"], "ver": project["version"]}, (path.name, node["type"])
        assert not [n for n in nodes if n not in ours and n.get("properties", {}).get("cnr_id") == project["name"]]


def test_every_example_workflow_has_its_readme_screenshot():
    readme = (REPO / "README.md").read_text()
    for path in (REPO / "examples_workflows").glob("*.json"):
        shot = f"docs/screenshots/{path.stem}.jpg"
        assert (REPO / shot).is_file() and shot in readme, f"{shot}: run make screenshots and link it in README.md"


def test_a_checkout_is_safe_under_comfy_import_guard(tmp_path):
    """comfy-import-guard (PyPI) reads every comfy.* reference in a pack's .py files, tests included, and says
    WILL BREAK when one is missing from a ComfyUI git ref. A git checkout of the pack is SAFE against every ComfyUI
    of the matrix: checked offline, against a local repository holding the matrix's trees (one tagged commit per
    version). The test environment installs it; LEAKLESS_IMPORT_GUARD names another."""
    import os
    import shutil

    import comfy_env

    # the test environment's (requirements.txt): beside this Python, or in the base venv the 0.33.0 venv layers on
    installed = [p for p in (Path(sys.executable).with_name("comfy-import-guard"),
                             comfy_env.CACHE / "venv" / "bin" / "comfy-import-guard") if p.exists()]
    guard = os.environ.get("LEAKLESS_IMPORT_GUARD") or (str(installed[0]) if installed else None) or \
        shutil.which("comfy-import-guard")
    if not guard:
        pytest.skip("comfy-import-guard not found (pip install comfy-import-guard in any venv, then "
                    "LEAKLESS_IMPORT_GUARD=/that/venv/bin/comfy-import-guard)")

    clone = tmp_path / "cache" / "ComfyUI"
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    clone.mkdir(parents=True)
    subprocess.run([*git, "init", "-q"], check=True)
    versions = [v for v, tree in comfy_env.MATRIX.items() if (tree / "main.py").is_file()]
    for version in versions:
        for old in clone.iterdir():
            if old.name != ".git":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        tree = comfy_env.MATRIX[version]
        shutil.copytree(tree, clone, dirs_exist_ok=True, ignore=lambda folder, names, root=tree: [  # ComfyUI's own
            n for n in names if n == "__pycache__" or (Path(folder) == root and n in (
                "custom_nodes", "models", "input", "output", "user", "temp"))])
        subprocess.run([*git, "add", "-A", "-f", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", version], check=True)
        subprocess.run([*git, "tag", f"v{version}"], check=True)
    checkout = tmp_path / "ComfyUI" / "custom_nodes" / "leakless"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, checkout / name)
    for version in versions:
        r = subprocess.run([guard, "--json", "check", "--cache-dir", str(tmp_path / "cache"), "--offline",
                            "--no-update", "--comfy-dir", str(tmp_path / "ComfyUI"), "--target", f"v{version}"],
                           capture_output=True, text=True, timeout=300)
        pack = json.loads(r.stdout)["packs"][0]
        assert pack["verdict"] == "SAFE", (version, pack["breaking"], pack["soft"], pack["unresolvable"])


def test_example_workflows_reach_the_templates_browser_from_any_checkout(tmp_path):
    """ComfyUI lists templates from example_workflows/; the pack mirrors examples_workflows/ there when it loads
    (nodes/driver/templates.py), with plain copies: nothing tracked is a symlink, so a Windows checkout
    (core.symlinks=false) gets the same files, and the mirror follows the source (new, changed, removed files)."""
    import importlib.util
    import shutil

    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [line for line in tracked.splitlines() if line.startswith("120000")], "a tracked symlink"
    assert "example_workflows/x.json" in _ignored(["example_workflows/x.json"])  # generated: not in git or the archive
    spec = importlib.util.spec_from_file_location("leakless_templates", REPO / "nodes" / "driver" / "templates.py")
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    pack = tmp_path / "pack"
    shutil.copytree(REPO / "examples_workflows", pack / "examples_workflows")
    target = pack / "example_workflows"
    target.mkdir()
    (target / "removed_since.json").write_text("{}")  # copies an earlier load made, as its record says
    (target / "flux_deleaker.json").write_text("{}")
    (target / templates.WRITTEN).write_text(json.dumps({"files": {n: templates.digest(b"{}") for n in (
        "removed_since.json", "flux_deleaker.json")}}))
    old = subprocess.run(["git", "show", "0205bf3:examples_workflows/sdxl_tome.json"], cwd=REPO, capture_output=True)
    if old.returncode == 0:  # a copy made before the record existed (a full clone has that version)
        (target / "sdxl_tome.json").write_bytes(old.stdout.replace(b"\n", b"\r\n"))
    names = templates.publish_templates(pack)
    source = sorted(p.name for p in (pack / "examples_workflows").iterdir())
    assert sorted(p.name for p in target.iterdir()) == sorted([*source, templates.WRITTEN])
    for name in source:
        assert (pack / "example_workflows" / name).read_bytes() == (pack / "examples_workflows" / name).read_bytes()
    assert sorted(names) == sorted(p.stem for p in (REPO / "examples_workflows").glob("*.json"))
    for path in (REPO / "examples_workflows").glob("*.json"):
        assert path.with_suffix(".jpg").is_file(), f"{path.stem}: its Templates thumbnail (run make screenshots)"
    blocked = tmp_path / "blocked"  # a plain file in the way (e.g. a symlink checked out on Windows): no crash
    shutil.copytree(REPO / "examples_workflows", blocked / "examples_workflows")
    (blocked / "example_workflows").write_text("examples_workflows")
    assert templates.publish_templates(blocked) == []
