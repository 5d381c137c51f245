"""The example workflows in ComfyUI's Templates browser.

ComfyUI lists a pack's templates from `<pack>/example_workflows/*.json` and serves `<name>.jpg` beside each one as
its thumbnail (app/custom_node_manager.py); the pack keeps its workflows in `examples_workflows/`. When ComfyUI
loads the pack, this mirrors them into `example_workflows/` (git- and registry-ignored, never edited): plain copies,
since a committed symlink is a plain text file on Windows checkouts (core.symlinks=false), and such a file would
stop ComfyUI's server from starting (aiohttp refuses a static route to a file).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]
SOURCE, TARGET = "examples_workflows", "example_workflows"
KINDS = (".json", ".jpg")


def publish_templates(pack: Path = PACK) -> list[str]:
    """Make `example_workflows/` hold exactly the workflows and thumbnails of `examples_workflows/`; returns the
    template names. A read-only install keeps working: the templates are then missing and a warning says why."""
    source, target = pack / SOURCE, pack / TARGET
    wanted = {p.name: p for p in sorted(source.iterdir()) if p.suffix in KINDS}
    try:
        target.mkdir(exist_ok=True)
        for old in target.iterdir():
            if old.name not in wanted and old.suffix in KINDS:
                old.unlink()
        for name, src in wanted.items():
            dst = target / name
            if not dst.is_file() or dst.read_bytes() != src.read_bytes():
                shutil.copyfile(src, dst)
    except OSError as error:
        logging.warning("Leakless: example workflows not added to the Templates browser (%s); open them from %s",
                        error, source)
        return []
    return [name.removesuffix(".json") for name in wanted if name.endswith(".json")]
