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


class Manifest:
    def __init__(self, out: Path, plan: dict):
        self.path = out / NAME
        self.data = {"fingerprint": fingerprint(plan), "plan": plan, "done": {}, "events": []}
        if self.path.exists():
            old = json.loads(self.path.read_text(encoding="utf-8"))
            if old.get("fingerprint") != self.data["fingerprint"]:
                raise EvaluationError(str(out), "it holds a run of another prompt set, workflow or variants.",
                                      "give a new --out folder (or delete this one to start over).")
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
