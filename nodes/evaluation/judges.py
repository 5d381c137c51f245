"""Judges, off by default: an external command (image path and row as JSON on stdin, a JSON score on stdout) or a
ComfyUI graph the user supplies (image in its LoadImage, the question where it says {question}, the answer from
its text output), asked per entity pair as DeLeaker's evaluation does and tallied as leak / no leak."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shlex
from pathlib import Path

from .errors import EvaluationError
from .prompts import Row

QUESTION = "{question}"
PAIR_QUESTION = ("Does the {a} in this image show visual features of a {b} (its colour, texture, shape or body "
                 "parts)? Answer yes or no.")


def questions(row: Row) -> list[str]:
    """One question per ordered pair of entities: did b leak into a? (DeLeaker's VLM protocol, as published)."""
    return [PAIR_QUESTION.format(a=a, b=b) for a in row.entities for b in row.entities if a != b]


def verdict(answer: str) -> str | None:
    words = re.findall(r"[a-z]+", answer.lower())
    return words[0] if words and words[0] in ("yes", "no") else None


class CommandJudge:
    def __init__(self, command: str, timeout: float = 300):
        self.argv = shlex.split(command)
        if not self.argv:
            raise EvaluationError("--judge-command", "it is empty.", "give a command, e.g. 'python judge.py'.")
        self.timeout = timeout

    async def __call__(self, server, image: Path, row: Row, variant: str) -> dict:
        payload = json.dumps({"image": str(image), "row": row.as_dict(), "variant": variant}).encode()
        try:
            proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            return {"error": f"judge command: {e.__class__.__name__} {e}"}
        if proc.returncode != 0:
            return {"error": f"judge command exited {proc.returncode}: {err.decode(errors='replace')[-300:]}"}
        try:
            score = json.loads(out)
        except json.JSONDecodeError:
            return {"error": f"judge command printed no JSON: {out.decode(errors='replace')[:200]!r}"}
        leak = score.get("leak") if isinstance(score, dict) else None
        return {"score": score, "leak": leak if isinstance(leak, bool) else None}


class GraphJudge:
    def __init__(self, graph: dict):
        loaders = [k for k, v in graph.items() if v["class_type"] == "LoadImage"]
        slots = [(k, n) for k, v in graph.items() for n, x in v["inputs"].items()
                 if isinstance(x, str) and QUESTION in x]
        if len(loaders) != 1 or not slots:
            raise EvaluationError("--judge-graph", f"it has {len(loaders)} LoadImage nodes and {len(slots)} inputs "
                                  f"holding {QUESTION}.", f"give one LoadImage and write {QUESTION} in the text "
                                  "input that takes the question.")
        self.graph, self.loader, self.slots = graph, loaders[0], slots

    async def __call__(self, server, image: Path, row: Row, variant: str) -> dict:
        if len(row.entities) < 2:
            return {"error": "fewer than two entities: nothing to ask"}
        name = await server.upload(image.read_bytes(), f"leakless_eval_{image.parent.name}_{image.name}")
        answers = []
        for question in questions(row):
            graph = copy.deepcopy(self.graph)
            graph[self.loader]["inputs"]["image"] = name
            for node_id, input_name in self.slots:
                graph[node_id]["inputs"][input_name] = graph[node_id]["inputs"][input_name].replace(QUESTION, question)
            outputs = await server.run(graph)
            answer = _answer(self.graph, outputs)
            answers.append({"question": question, "answer": answer, "verdict": verdict(answer)})
        said = [a["verdict"] for a in answers]
        leak = True if "yes" in said else (False if all(v == "no" for v in said) else None)
        return {"answers": answers, "leak": leak}


def _answer(graph: dict, outputs: dict) -> str:
    """The text of the output node titled 'Answer', else of the first node with a text output."""
    texts = {k: v["text"] for k, v in outputs.items() if v.get("text")}
    titled = [k for k in texts if graph.get(k, {}).get("_meta", {}).get("title") == "Answer"]
    for node_id in titled or sorted(texts, key=lambda k: (len(k), k)):
        value = texts[node_id]
        return str(value[0] if isinstance(value, list) else value)
    return ""


def tallies(done: dict, variants: list[str], rows: int) -> dict:
    out = {}
    for name in variants:
        judged = [r.get("judge", {}) for r in done.values() if r["variant"] == name]
        out[name] = {"prompts": rows, "results": len(judged),
                     "leak": sum(j.get("leak") is True for j in judged),
                     "no leak": sum(j.get("leak") is False for j in judged),
                     "undecided": sum(j.get("leak") is None for j in judged)}
    return out
