"""Prompt sets: SLIM-style rows (JSONL or CSV: prompt with **marked** entities, entities, seed) and
T2I-CompBench-style text files (one prompt per line). Seeds missing from a row are generated and recorded."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import phrases
from .errors import EvaluationError, refuse_rows

MAX_SEED = 2**32 - 1
ENTITY_FIX = ("name entities as whole words of the prompt ('cow, horse'; 'cat#2' for the second 'cat'), or mark "
              "them as **cow**.")


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str  # as given, with any ** marks
    entities: tuple[str, ...]  # as Leakless's nodes take them: 'cow', 'cat#2'
    seed: int
    where: str = field(default="", compare=False)  # file and line, for messages

    @property
    def clean(self) -> str:
        return phrases.MARK.sub(r"\1", self.prompt)

    def as_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "entities": list(self.entities), "seed": self.seed,
                "clean": self.clean}


def _entities(value, where: str) -> list[phrases.Phrase]:
    if value in (None, ""):
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ", ".join(value)
    if not isinstance(value, str):
        raise EvaluationError(where, f"'entities' is {value!r}.", "give a list of strings or 'cow, horse'.")
    try:
        return phrases.parse(value)
    except phrases.PhraseError as e:
        raise EvaluationError(where, f"'entities' {e}.", ENTITY_FIX) from None


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
    prompt = prompt.strip()
    listed = _entities(fields.get("entities"), where)
    problem = None
    try:
        clean, marked = phrases.marked(prompt)
        entities = listed or marked
        missing = [str(e) for e in entities if phrases.find(clean, e) is None]
        if missing:
            problem = f"entities {missing} are not whole words of the prompt {clean!r}"
    except phrases.PhraseError as e:
        entities, problem = listed, str(e)
    row_id = str(fields.get("id") or fallback_id)
    return {"id": row_id, "prompt": prompt, "entities": tuple(str(e) for e in entities),
            "seed": _seed(fields.get("seed"), where), "where": where, "problem": problem}


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EvaluationError(path.name, f"it is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}).",
                              "save it as UTF-8 (most editors: Save As, encoding UTF-8).") from None
    except OSError as e:
        raise EvaluationError(str(path), f"cannot read it ({e.strerror or e}).", "give a readable file.") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(_text(path).splitlines(), 1):
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
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    rows, start = [], 1  # the line the row being read starts on
    try:
        if not reader.fieldnames or not {"prompt", "text"} & set(reader.fieldnames):
            raise EvaluationError(path.name, f"the header is {reader.fieldnames}.",
                                  "start the file with a header line holding 'prompt' (and 'entities', 'seed').")
        start = reader.line_num + 1
        for fields in reader:
            where = f"{path.name} line {reader.line_num}"
            if None in fields:
                raise EvaluationError(where, "the row has more fields than the header.", "quote fields with commas.")
            rows.append(_row(fields, where, f"{reader.line_num:04d}"))
            start = reader.line_num + 1
    except csv.Error as e:
        raise EvaluationError(f"{path.name} line {start}", f"not CSV ({e}).",
                              "close every '\"' that opens a field, and keep prompts short (a field may hold "
                              f"{csv.field_size_limit()} characters at most).") from None
    return rows


def _read_text(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(_text(path).splitlines(), 1):
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
    duplicates = sorted(i for i, n in Counter(r["id"] for r in rows).items() if n > 1)
    if duplicates:
        raise EvaluationError(path.name, f"row ids {duplicates} appear more than once.", "give every row its own id.")
    problems = [(r["where"], r["problem"]) for r in rows if r["problem"]]
    if problems:
        raise refuse_rows(path.name, problems, len(rows), ENTITY_FIX)
    rng = random.Random(base_seed)
    generated = [rng.randint(0, MAX_SEED) for _ in rows]
    return [Row(r["id"], r["prompt"], r["entities"], generated[i] if r["seed"] is None else r["seed"], r["where"])
            for i, r in enumerate(rows)]
