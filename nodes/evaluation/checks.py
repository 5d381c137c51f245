"""Every row against every variant before the first job: the words the workflow's Leakless nodes will look for
(DeLeaker Encode's entities, Heatmap Encode's words, Leak Patch's items) must be there, as the nodes read them,
in the prompt each job gives them. A row that would fail every job is refused up front, with the others."""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import phrases, workflow
from .errors import refuse_rows
from .prompts import Row


@dataclass(frozen=True)
class PhraseInput:
    name: str
    fewest: int
    disjoint: bool  # no two phrases may share words
    marks: bool = True  # the phrases may be **marked** in the text instead


PHRASE_INPUTS = {
    "LeaklessDeLeakerEncode": PhraseInput("entities", 2, disjoint=True),
    "LeaklessHeatmapEncode": PhraseInput("words", 1, disjoint=False),
    "LeaklessLeakPatch": PhraseInput("items", 1, disjoint=False, marks=False),
}
FIX = ("give each of these rows what the workflow needs ('entities' in the row, or **marks**, as whole words of its "
       "prompt), leave the rows out, or change the workflow's inputs named above.")


def _text(graph: dict, node: dict) -> str | None:
    """The text a node encodes in a job: its literal, or the prompt primitive it is linked to (None: unknown)."""
    text = node["inputs"].get("text")
    if isinstance(text, list) and text[0] in graph:
        source = graph[text[0]]
        text = source["inputs"].get(workflow.PROMPT_SOURCES.get(source["class_type"], ""))
    return text if isinstance(text, str) else None


def problem(text: str, listed: str, spec: PhraseInput) -> str | None:
    """Why the node would refuse these phrases of `text` (None: it would not), read as the node reads them."""
    try:
        clean, marked = phrases.marked(text) if spec.marks else (text, [])
        if listed.strip() and marked:
            return f"{spec.name} are filled in and the text marks them too"
        found = phrases.parse(listed) if listed.strip() else marked
    except phrases.PhraseError as e:
        return f"{spec.name}: {e}"
    if len(found) < spec.fewest:
        return f"{len(found)} {spec.name} given, it needs at least {spec.fewest}"
    spans = []
    for phrase in found:
        span = phrases.find(clean, phrase)
        if span is None:
            times = phrases.count(clean, phrase.text)
            return (f"'{phrase}' is not a whole word of the prompt" if not times else
                    f"'{phrase.text}' occurs {times} time(s) in the prompt, not {phrase.occurrence}")
        spans.append((span, phrase))
    if spec.disjoint:
        for i, ((s1, e1), a) in enumerate(spans):
            for (s2, e2), b in spans[i + 1:]:
                if s1 < e2 and s2 < e1:
                    return f"'{a}' and '{b}' share words; each word can belong to one of them only"
    return None


def check_rows(rows: list[Row], variants: list[workflow.Variant], source: str) -> None:
    """Refuse, in one message, every row some variant's Leakless node would refuse."""
    distinct = {}  # variants that give the nodes checked the same inputs are checked once
    for v in variants:
        checked = {k: n for k, n in v.graph.items() if n["class_type"] in PHRASE_INPUTS or
                   n["class_type"] in workflow.PROMPT_SOURCES}
        if any(n["class_type"] in PHRASE_INPUTS for n in checked.values()):
            distinct.setdefault(json.dumps([checked, workflow.prompt_targets(v.graph)], sort_keys=True), v)
    variants = list(distinct.values())
    problems = []
    for row in rows if variants else ():
        found = {}
        for variant in variants:
            graph = workflow.job_graph(variant.graph, row, "check")
            for node_id, node in graph.items():
                spec = PHRASE_INPUTS.get(node["class_type"])
                text, listed = _text(graph, node), node["inputs"].get(spec.name) if spec else None
                if spec and text is not None and isinstance(listed, str):
                    why = problem(text, listed, spec)
                    if why:
                        title = node.get("_meta", {}).get("title") or node["class_type"]
                        found.setdefault(f"{title} (node {node_id}): {why}", None)
        if found:
            problems.append((row.where or f"row {row.id}", "; ".join(found)))
    if problems:
        raise refuse_rows(source, problems, len(rows), FIX)
