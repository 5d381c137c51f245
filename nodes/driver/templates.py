"""The example workflows in ComfyUI's Templates browser.

ComfyUI lists a pack's templates from `<pack>/example_workflows/*.json` and serves `<name>.jpg` beside each one as
its thumbnail (app/custom_node_manager.py); the pack keeps its workflows in `examples_workflows/`. When ComfyUI
loads the pack, this mirrors them into `example_workflows/` (git- and registry-ignored): plain copies, since a
committed symlink is a plain text file on Windows checkouts (core.symlinks=false), and such a file would stop
ComfyUI's server from starting (aiohttp refuses a static route to a file).

Only files the pack wrote are ever replaced or removed: `example_workflows/.leakless-written.json` lists each one
with the digest of what was written, and a file whose content changed since (or that the pack never wrote) is the
user's and stays as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]
SOURCE, TARGET = "examples_workflows", "example_workflows"
KINDS = (".json", ".jpg")
WRITTEN = ".leakless-written.json"  # a dot file: ComfyUI's template listing (glob *.json) never shows it

# digest(content, name) of every file of examples_workflows/ that versions before WRITTEN existed could have
# copied (its git history since the mirror began, commit 0205bf3): such a copy, under its own name, is the pack's.
_BEFORE_WRITTEN = frozenset("""
    01402ffcff2e617a 073f9f73a72a0479 07519e6127c48e49 095d90e49e8429b6 09c272e11c161073 0c55186a7b0ef7b2
    0e6f1ce0a801d9b2 116f5dcc430948c4 1399347024d28fa8 13cae0dc014617f5 1642f013c811d08b 198990b267614a97
    1a5ee674a34aa2fa 1ac422fecb151c7e 1f685f91f950d221 200db20bc8bf7565 2120818469068720 24b2960aa95894de
    2683ba3172e1d3ba 2a4878d7c2ad02f3 2a8795ace78109a3 300ad8de3859540b 34d4c1b4b918e11e 34d6103fbada4ad9
    37b2e4fffbed7819 3822dae317d42b3e 39e0a9eb06956383 3db6bf7b4356cc1b 42cc42a14ebe23b1 42ee2541d45dc6fd
    44da225d9a268588 466374adc1c95c28 473d26b2aea2106c 488e23c0cafd85ed 4c3a8664f2112901 50b24b2f75e4846c
    50b676e9341106fb 585e824f1dc13725 5a3cc450633a6f95 5c523ad515542569 5e119dec66966fc9 5e8ec7ad42f8731f
    611d5e1417cf892e 61cdeb85fac85aed 63742c9cbb737e64 67d810004082c855 6e050fd4f529008f 720e8c663c34e63b
    7a1a961f37656e49 7de36126ae71d23c 837386eaea4847d5 847e403b50758f33 85f109d692968496 894b4923aeb57d5e
    895907d4ec64f026 8b2ee784240d4270 8ccffc8c30eeb8dd 8f4b4e7155d15e01 8fa9a8fc24771e59 8fac65b52372cd85
    927e290afbaa30c1 92ee84cccb01cce3 939acc2f454e81f1 95ec477407922c5a 96381104b720629a 97198d178b50a8cd
    997cc8a3f7286192 9aeeb62af2ec7869 9fd0a6ee009e0628 a22c9c58e993beea a6bfc80712df9b48 a6e25be901315679
    a9a7912956e80697 af7538298d9e0ad4 b308a7000ceddebc b57d6524c4d23dd6 b68bc8287de876e3 b6f5bc73c5f00571
    b7a5c8448950f04b b8071cee9b755f4a c79cccc7205cdeb2 c7e71e1255de6f89 c936a20f747db7cc c97107689fd2989a
    c9c9360c8dd7968c cc5fb21bdbbe947c d272b35a2d15d3d9 d3f079ec3b31c82b d45dc86443ef16b8 d98fe25d2ebd272a
    dc53e127f9b6f316 dcae1958695e1910 de65d566baec2052 e082e2c7794dece3 e2b68db1acd5c40e e598794d94261819
    e985758aa16557a6 ec7fbcf65af436fc ec9eca71b139b279 eca1c04ff501d118 eca2964018e1b10c ee2ac911a0ee3cf2
    f0a0d6fc6813e2fe f71babaa79f393c7 f72a1b0820d5c9a3 fa077d4a57413067 ff16a01896a52fa0 ff83876b24f63756
""".split())


def digest(data: bytes, name: str = "") -> str:
    """Of the content (and name, if given), line endings aside (a Windows checkout may have converted them)."""
    return hashlib.sha256(name.encode() + b"\0" * bool(name) + data.replace(b"\r\n", b"\n")).hexdigest()[:16]


def _written(target: Path) -> dict[str, str]:
    """{file name: digest of what the pack wrote}; empty when there is no record or it cannot be read."""
    try:
        record = json.loads((target / WRITTEN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}


def _ours(path: Path, written: dict[str, str]) -> bool:
    """Whether `path` holds what the pack wrote there (and nothing the user changed since)."""
    if not path.is_file() or path.is_symlink():
        return False
    data, known = path.read_bytes(), written.get(path.name)
    return digest(data) == known if known else digest(data, path.name) in _BEFORE_WRITTEN


def publish_templates(pack: Path = PACK) -> list[str]:
    """Make `example_workflows/` hold the workflows and thumbnails of `examples_workflows/`, never touching a file
    the pack did not write; returns the template names. A read-only install keeps working: the templates are then
    missing and a warning says why."""
    source, target = pack / SOURCE, pack / TARGET
    wanted = {p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.suffix in KINDS}
    try:
        target.mkdir(exist_ok=True)
        written = _written(target)
        for old in sorted(target.iterdir()):
            if old.name not in wanted and old.suffix in KINDS and _ours(old, written):
                old.unlink()
        now, kept = {}, []
        for name, data in wanted.items():
            dst = target / name
            if dst.exists() and not _ours(dst, written) and not (dst.is_file() and dst.read_bytes() == data):
                kept.append(name)  # the user's file: it stays, the pack's template of that name is left out
                continue
            if not dst.is_file() or dst.read_bytes() != data:
                dst.write_bytes(data)
            now[name] = digest(data)
        if now != written:
            record = target / WRITTEN
            tmp = record.with_name(record.name + ".tmp")
            tmp.write_text(json.dumps({"files": now}, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, record)
    except OSError as error:
        logging.warning("Leakless: example workflows not added to the Templates browser (%s); open them from %s",
                        error, source)
        return []
    if kept:
        logging.warning("Leakless: %s in %s are not the pack's copies (changed since, or never written by it), so "
                        "they were kept and the pack's templates of those names left out; rename or move them to get "
                        "the pack's.", ", ".join(kept), target)
    return [name.removesuffix(".json") for name in now if name.endswith(".json")]
