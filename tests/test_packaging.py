"""Packaging promises: registry metadata, lint and security rules, light imports, docs and examples per node."""

import ast
import json
import subprocess
import sys
import tomllib

from expected import EXPECTED_NODE_IDS

from conftest import HARNESS, REPO

# never import ComfyUI
PURE_MODULES = ["alignment.py", "errors.py", "flow.py", "redundancy.py", "grid.py", "deleaker.py", "tome.py",
                "provenance.py", "validation.py"]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths", "server", "execution",
                 "node_helpers", "latent_preview"}


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
    assert {"Operating System :: OS Independent", "Environment :: GPU :: NVIDIA CUDA"} <= set(project["classifiers"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    assert comfy["requires-comfyui"] == ">=0.3.75"
    assert "web" not in comfy  # WEB_DIRECTORY registers js/; both would list every script twice


def test_requirements_add_nothing_comfyui_ships():
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln and not ln.startswith("#")] == []


def test_entry_point_only_and_pure_modules_never_import_comfyui():
    init = ast.parse((REPO / "__init__.py").read_text())
    top_imports = [n for n in init.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top_imports == []
    for name in PURE_MODULES:
        tree = ast.parse((REPO / "nodes" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]} if node.level == 0 else set()
            else:
                continue
            assert not roots & COMFY_MODULES, f"nodes/{name} imports {roots & COMFY_MODULES}"


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
                     "icon.svg", "js/leakless.js", "nodes/extension.py", "nodes/tome.py"):
        assert required in names, required
    assert {f"js/docs/{node_id}.md" for node_id in EXPECTED_NODE_IDS} <= names
    assert any(n.startswith("examples_workflows/") for n in names)
    for name in names:
        assert not name.startswith((".cache/", "test-output/", "tests/", "bench/", ".ci/", "docs/")), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
    assert archive.stat().st_size < 1_000_000


def test_every_example_workflow_has_its_readme_screenshot():
    readme = (REPO / "README.md").read_text()
    for path in (REPO / "examples_workflows").glob("*.json"):
        shot = f"docs/screenshots/{path.stem}.jpg"
        assert (REPO / shot).is_file() and shot in readme, f"{shot}: run make screenshots and link it in README.md"
