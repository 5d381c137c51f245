"""Prompt sets: SLIM-style rows (JSONL or CSV: prompt with **marked** entities, entities, seed) and
T2I-CompBench-style text files (one prompt per line). Seeds missing from a row are generated and recorded."""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import EvaluationError

MARK = re.compile(r"\*\*(.+?)\*\*")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str  # as given, with any ** marks
    entities: tuple[str, ...]
    seed: int

    @property
    def clean(self) -> str:
        return MARK.sub(r"\1", self.prompt)

    def as_dict(self) -> dict:
        return {**asdict(self), "entities": list(self.entities), "clean": self.clean}


def _entities(value, where: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = [v for v in re.split(r"[;,]", value)]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EvaluationError(where, f"'entities' is {value!r}.", "give a list of strings or 'cow, horse'.")
    return [v.strip() for v in value if v.strip()]


def _seed(value, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        seed = int(value)
    except (TypeError, ValueError):
        seed = -1
    if not 0 <= seed <= MAX_SEED or isinstance(value, (bool, float)):
        raise EvaluationError(where, f"'seed' is {value!r}.", f"give a whole number from 0 to {MAX_SEED}.")
    return seed


def _row(fields: dict, where: str, fallback_id: str) -> dict:
    prompt = fields.get("prompt", fields.get("text"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvaluationError(where, "the row has no 'prompt'.", "give every row a non-empty 'prompt' field.")
    marked = MARK.findall(prompt)
    entities = _entities(fields.get("entities"), where) or marked
    clean = MARK.sub(r"\1", prompt)
    missing = [e for e in entities if e.lower() not in clean.lower()]
    if missing:
        raise EvaluationError(where, f"entities {missing} are not words of the prompt {clean!r}.",
                              "name entities as they appear in the prompt.")
    row_id = str(fields.get("id") or fallback_id)
    return {"id": row_id, "prompt": prompt.strip(), "entities": tuple(entities), "seed": _seed(fields.get("seed"),
                                                                                              where)}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvaluationError(where, f"not JSON ({e.msg}).", "write one JSON object per line.") from None
        if not isinstance(fields, dict):
            raise EvaluationError(where, "the line is not a JSON object.", 'write {"prompt": ..., "seed": ...}.')
        rows.append(_row(fields, where, f"{n:04d}"))
    return rows


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"prompt", "text"} & set(reader.fieldnames):
            raise EvaluationError(path.name, f"the header is {reader.fieldnames}.",
                                  "start the file with a header line holding 'prompt' (and 'entities', 'seed').")
        rows = []
        for fields in reader:
            where = f"{path.name} line {reader.line_num}"
            if None in fields:
                raise EvaluationError(where, "the row has more fields than the header.", "quote fields with commas.")
            rows.append(_row(fields, where, f"{reader.line_num:04d}"))
    return rows


def _read_text(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append(_row({"prompt": line}, f"{path.name} line {n}", f"{n:04d}"))
    return rows


READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_text}


def load(path: str | Path, base_seed: int = 0) -> list[Row]:
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise EvaluationError(path.name, "unknown prompt-set format.", "use .jsonl, .csv or .txt (one per line).")
    if not path.is_file():
        raise EvaluationError(str(path), "no such file.", "give the path of a prompt set.")
    rows = reader(path)
    if not rows:
        raise EvaluationError(path.name, "the prompt set is empty.", "add at least one prompt.")
    ids = [r["id"] for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise EvaluationError(path.name, f"row ids {duplicates} appear more than once.", "give every row its own id.")
    rng = random.Random(base_seed)
    generated = [rng.randint(0, MAX_SEED) for _ in rows]
    return [Row(r["id"], r["prompt"], r["entities"], generated[i] if r["seed"] is None else r["seed"])
            for i, r in enumerate(rows)]
