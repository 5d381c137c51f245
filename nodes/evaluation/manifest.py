"""The run's manifest: what was asked (fingerprinted) and every finished job, rewritten atomically after each
result so that a stopped or crashed run resumes without redoing or losing one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import EvaluationError

NAME = "manifest.json"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def existing(out: Path) -> dict | None:
    """What a run before left in `out` (None: nothing); a manifest that is not whole is refused, never replaced."""
    path = out / NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = None if _whole(data) else "it is JSON but not a manifest this runner wrote"
    except (OSError, ValueError, RecursionError) as e:
        problem = f"it cannot be read ({e.__class__.__name__}: {e})"
    if problem:
        raise EvaluationError(str(path), f"{problem}, so the results it lists cannot be resumed.",
                              "to resume, restore it (from a backup or the copy you made); to start over and keep "
                              f"every file here, give another --out, or move it aside (mv {path} {path}.damaged) "
                              "and run the same command: it redoes every job.")
    return data


def _whole(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("fingerprint"), str) and isinstance(data.get("plan"), dict)
            and isinstance(data.get("events"), list) and isinstance(data.get("done"), dict)
            and all(isinstance(r, dict) and isinstance(r.get("images"), list) for r in data["done"].values()))


class Manifest:
    def __init__(self, out: Path, plan: dict):
        self.path = out / NAME
        self.data = {"fingerprint": fingerprint(plan), "plan": plan, "done": {}, "events": []}
        old = existing(out)
        if old is not None:
            if old["fingerprint"] != self.data["fingerprint"]:
                raise EvaluationError(str(out), "it holds a run of another prompt set, workflow or variants.",
                                      "give a new --out folder (or move this one aside to start over).")
            self.data = old

    @property
    def done(self) -> dict:
        return self.data["done"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=1).encode())

    def record(self, key: str, result: dict) -> bool:
        """False (and nothing written) when the job is already recorded."""
        if key in self.done:
            return False
        self.done[key] = result
        self.save()
        return True

    def event(self, text: str) -> None:
        self.data["events"].append(text)
        self.save()
