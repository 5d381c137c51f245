"""Workflows as the runner sends them: UI format converted to API format with the server's /object_info (the
frontend's rules, bypass included), variants ("off": Leakless nodes bypassed; "saved"; sweeps), and the prompt,
seed and output prefix written into each job's graph."""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EvaluationError
from .prompts import Row

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MUTED, BYPASSED = 2, 4
PROMPT_SOURCES = {"PrimitiveStringMultiline": "value", "PrimitiveString": "value"}
ENTITY_INPUTS = {"LeaklessDeLeakerEncode": ("entities", ", ")}
SEED_INPUTS = ("seed", "noise_seed")
MAX_VARIANTS = 256
IMAGE_OUTPUTS = ("SaveImage",)


def read(path: str | Path) -> dict:
    """A workflow file's JSON, UI or API format, its structure checked (no server needed)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise EvaluationError(str(path), f"cannot read the workflow ({e.__class__.__name__}: {e}).",
                              "give a workflow saved by ComfyUI (Save, or Export (API)).") from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        problem = _ui_problem(data)
    elif isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        problem = _api_problem(data)
    else:
        problem = "neither a UI-format nor an API-format workflow"
    if problem:
        raise EvaluationError(path.name, f"{problem}.", "save it from ComfyUI (Save, or Export (API)).")
    return data


def _api_problem(graph: dict) -> str | None:
    for node_id, node in graph.items():
        if not isinstance(node["class_type"], str) or not isinstance(node.get("inputs"), dict):
            return f"node {node_id} has no 'inputs' object or no class_type name"
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and not (_is_link(value) and value[0] in graph):
                return f"node {node_id} input {name!r} links to {value!r}, which is not a node output of the graph"
    return None


def _ui_problem(workflow: dict) -> str | None:
    for node in workflow["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str) or "id" not in node:
            return f"a node ({str(node)[:80]}) has no id or type"
        for key in ("inputs", "outputs"):
            slots = node.get(key) or []
            if not isinstance(slots, list) or not all(isinstance(slot, dict) for slot in slots):
                return f"node {node['id']} ({node['type']}) has a malformed '{key}'"
        if not isinstance(node.get("widgets_values") or [], (list, dict)):
            return f"node {node['id']} ({node['type']}) has a malformed 'widgets_values'"
    for link in workflow.get("links") or []:
        if not (isinstance(link, list) and len(link) >= 5) and not (
                isinstance(link, dict) and {"id", "origin_id", "origin_slot", "target_id", "target_slot"} <= set(link)):
            return f"a link ({str(link)[:80]}) is malformed"
    return None


def load(path: str | Path, object_info: dict) -> dict:
    """An API-format graph from a UI- or API-format workflow file."""
    path = Path(path)
    data = read(path)
    graph = ui_to_api(data, object_info, path.name) if isinstance(data.get("nodes"), list) else data
    unknown = sorted({n["class_type"] for n in graph.values()} - set(object_info))
    if unknown:
        raise EvaluationError(path.name, f"node types {unknown} are not installed on the server.",
                              "install their packs on every server, or remove them.")
    return graph


def _spec(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            spec = info["input"][section][name]
            return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    return None, {}


def input_names(info: dict) -> list[str]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    return [n for section in ("required", "optional") for n in order.get(section, [])]


def _widget_slots(info: dict) -> list[str | None]:
    """The names the frontend's widgets_values hold in order; None for the extra values it stores beside some
    (a seed's 'control after generate', an image's upload button)."""
    slots = []
    for name in input_names(info):
        kind, opts = _spec(info, name)
        if isinstance(kind, list) or (kind in WIDGET_TYPES and not opts.get("forceInput")):
            slots.append(name)
            if kind == "INT" and (opts.get("control_after_generate") or name in SEED_INPUTS):
                slots.append(None)
            if opts.get("image_upload"):
                slots.append(None)
    return slots


def ui_to_api(workflow: dict, object_info: dict, name: str = "workflow") -> dict:
    """What the frontend's graphToPrompt sends: muted and frontend-only nodes dropped, reroutes followed, and a
    bypassed node's outputs fed from its input in the same slot if that has the output's type, else its first input
    of that type (the consumer loses the input when there is none)."""
    try:
        return _ui_to_api(workflow, object_info)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:  # a shape _ui_problem misses
        raise EvaluationError(name, f"its nodes and links do not fit together ({e.__class__.__name__}: {e}).",
                              "open it in ComfyUI and save it again.") from None


def _ui_to_api(workflow: dict, object_info: dict) -> dict:
    if workflow.get("definitions", {}).get("subgraphs"):
        raise EvaluationError("workflow", "it contains subgraphs.", "unpack the subgraphs (right click, Unpack).")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[link[0]] = link

    def source(link_id, seen=()):
        if link_id is None or link_id not in links or link_id in seen:
            return None
        _, origin, slot = links[link_id][:3]
        node = nodes.get(origin)
        if node is None or node.get("mode") == MUTED:
            return None
        if node["type"] == "Reroute":
            return source(node["inputs"][0].get("link"), (*seen, link_id))
        if node["type"] in FRONTEND_ONLY:
            return None
        if node.get("mode") == BYPASSED:
            wanted = node["outputs"][slot]["type"]
            inputs = node.get("inputs", [])
            order = ([slot] if slot < len(inputs) else []) + list(range(len(inputs)))
            for i in order:
                if inputs[i].get("type") == wanted:
                    return source(inputs[i].get("link"), (*seen, link_id))
            return None
        return [str(origin), slot]

    api = {}
    for node_id, node in sorted(nodes.items()):
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise EvaluationError(f"workflow node {node_id}", f"node type {node['type']!r} is not installed on the "
                                  "server.", "install its pack on every server, or remove the node.")
        values = node.get("widgets_values") or []
        inputs = {}
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k in input_names(info)})
        else:
            slots = _widget_slots(info)
            inputs.update({name: v for name, v in zip(slots, values, strict=False) if name})
            # A workflow saved before a node gained optional inputs (added at the end): the frontend gives them
            # their defaults; a missing required one means the workflow does not fit this node.
            for name in (s for s in slots[len(values):] if s):
                kind, opts = _spec(info, name)
                if name in info["input"].get("required", {}) or "default" not in opts:
                    raise EvaluationError(f"workflow node {node_id} ({node['type']})", f"it has {len(values)} "
                                          f"widget values; the server's node has the widgets "
                                          f"{[s for s in slots if s]}.", "open and save the workflow in this "
                                          "ComfyUI version's frontend.")
                inputs[name] = opts["default"]
        for slot in node.get("inputs", []):
            linked = source(slot.get("link"))
            origin = nodes.get(links[slot["link"]][1]) if slot.get("link") in links else None
            if linked is not None:
                inputs[slot["name"]] = linked
            elif origin is None or origin["type"] != "PrimitiveNode":
                if "widget" not in slot:
                    inputs.pop(slot["name"], None)
        api[str(node_id)] = {"class_type": node["type"], "inputs": inputs,
                             "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
    return api


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def bypass(graph: dict, node_ids: set[str], object_info: dict) -> dict:
    """The graph with `node_ids` bypassed as the UI does, in API terms; raises KeyError naming a node whose used
    output has no input of its type."""
    def resolve(link):
        node_id, slot = link
        if node_id not in node_ids:
            return link
        node = graph[node_id]
        info = object_info[node["class_type"]]
        wanted = info["output"][slot]
        names = input_names(info)
        order = ([names[slot]] if slot < len(names) else []) + names
        for name in order:
            if _spec(info, name)[0] == wanted and _is_link(node["inputs"].get(name)):
                return resolve(node["inputs"][name])
        raise KeyError(node_id)

    out = {}
    for node_id, node in graph.items():
        if node_id in node_ids:
            continue
        node = copy.deepcopy(node)
        for name, value in list(node["inputs"].items()):
            if _is_link(value):
                node["inputs"][name] = resolve(value)
        out[node_id] = node
    return out


def method_off(graph: dict, object_info: dict) -> tuple[dict, list[str]]:
    """Every Leakless node bypassed that can be (an encode node has no input of its conditioning's type and stays);
    returns the graph and what stayed, as notes."""
    leakless = {k for k, v in graph.items() if v["class_type"].startswith("Leakless")}
    if not leakless:
        raise EvaluationError("workflow", "it has no Leakless node, so 'off' and 'saved' would be the same graph.",
                              "give a workflow that uses a Leakless node.")
    chosen, kept = set(leakless), []
    while True:
        try:
            return bypass(graph, chosen, object_info), kept
        except KeyError as e:
            node_id = e.args[0]
            chosen.discard(node_id)
            kept.append(f"{node_id} {graph[node_id]['class_type']} kept: an output it feeds has no input of its type")
            if not chosen:
                raise EvaluationError("workflow", f"no Leakless node can be bypassed ({'; '.join(kept)}).",
                                      "use only the 'saved' variant and sweeps, or wire the node so that bypassing "
                                      "it leaves a working graph.") from None


def find_nodes(graph: dict, ref: str, object_info: dict) -> list[str]:
    """Nodes named by id, title, class, or display name (with or without the 'Leakless' prefix)."""
    def names(node_id, node):
        cls = node["class_type"]
        display = object_info.get(cls, {}).get("display_name") or cls
        found = {node_id, node.get("_meta", {}).get("title", ""), cls, display}
        return found | {n.removeprefix("Leakless").strip() for n in found}
    return sorted((k for k, v in graph.items() if ref in names(k, v)), key=lambda k: (len(k), k))


def _coerce(value: str, info: dict, name: str, where: str):
    kind, opts = _spec(info, name)
    try:
        if isinstance(kind, list) or kind == "COMBO":
            choices = kind if isinstance(kind, list) else opts.get("options", [])
            if value not in choices:
                raise ValueError(f"not one of {choices}")
            return value
        if kind == "BOOLEAN":
            if value.lower() not in ("true", "false"):
                raise ValueError("not true or false")
            return value.lower() == "true"
        if kind in ("INT", "FLOAT"):
            number = int(value) if kind == "INT" else float(value)
            if ("min" in opts and number < opts["min"]) or ("max" in opts and number > opts["max"]):
                raise ValueError(f"outside {opts.get('min')}..{opts.get('max')}")
            return number
        return value
    except ValueError as e:
        raise EvaluationError(where, f"{value!r} is {e}.", f"give a valid {kind} for {name}.") from None


@dataclass
class Setting:
    """`Node.input=v1,v2`: the nodes it names and the values, checked against the server's node definitions."""
    text: str
    node_ids: list[str]
    name: str
    values: list = field(default_factory=list)


def parse_setting(text: str, graph: dict, object_info: dict) -> Setting:
    ref_input, eq, values = text.partition("=")
    ref, dot, name = ref_input.rpartition(".")
    if not eq or not dot or not ref or not name or not values:
        raise EvaluationError(text, "not of the form Node.input=value[,value...].",
                              "write e.g. DeLeaker.alpha=1.0,1.5.")
    node_ids = find_nodes(graph, ref, object_info)
    if not node_ids:
        known = sorted({v["class_type"].removeprefix("Leakless") for v in graph.values()})
        raise EvaluationError(text, f"no node of the workflow is called {ref!r}.",
                              f"use a node id, title or type of the workflow: {', '.join(known)}.")
    info = object_info[graph[node_ids[0]]["class_type"]]
    if name not in input_names(info):
        raise EvaluationError(text, f"{graph[node_ids[0]]['class_type']} has no input {name!r}.",
                              f"use one of {input_names(info)}.")
    return Setting(text, node_ids, name, [_coerce(v.strip(), info, name, text) for v in values.split(",")])


def apply(graph: dict, settings: list[Setting], values: tuple) -> dict:
    graph = copy.deepcopy(graph)
    for setting, value in zip(settings, values, strict=True):
        for node_id in setting.node_ids:
            graph[node_id]["inputs"][setting.name] = value
    return graph


@dataclass
class Variant:
    name: str
    graph: dict
    notes: list[str] = field(default_factory=list)


def _check_distinct(names: list[str], fixed: list[Setting], swept: list[Setting]) -> None:
    """Every variant is a different run: no variant named twice, no sweep value twice, no input changed by two
    settings (the last would win unseen); and there are not so many that the plan alone fills the memory."""
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    if twice:
        raise EvaluationError("--variants", f"{', '.join(twice)} given twice: two variants would be the same run.",
                              "name each variant once.")
    for s in swept:
        twice = [v for v, k in Counter(s.values).items() if k > 1]
        if twice:
            raise EvaluationError(s.text, f"the value {twice[0]!r} is given twice: two variants would be the same run "
                                  "and only one result could be kept.", "give each value once.")
    changed = {}
    for s in fixed + swept:
        for node_id in s.node_ids:
            other = changed.setdefault((node_id, s.name), s)
            if other is not s:
                raise EvaluationError(s.text, f"it changes input {s.name!r} of node {node_id}, and so does "
                                      f"{other.text}.", "change each input in one --set or --sweep.")
    count = len(names) + (math.prod(len(s.values) for s in swept) if swept else 0)
    if count > MAX_VARIANTS:
        raise EvaluationError("--sweep", f"{count} variants (every combination of the sweeps); at most "
                              f"{MAX_VARIANTS} are run at once.", "sweep fewer values, or split the sweep over runs.")


def variants(graph: dict, object_info: dict, names: list[str], sweeps: list[str], sets: list[str]) -> list[Variant]:
    fixed = [parse_setting(s, graph, object_info) for s in sets]
    for s in fixed:
        if len(s.values) != 1:
            raise EvaluationError(s.text, "--set takes one value.", "use --sweep for several values.")
    swept = [parse_setting(s, graph, object_info) for s in sweeps]
    _check_distinct(names, fixed, swept)
    base = apply(graph, fixed, tuple(s.values[0] for s in fixed))
    out = []
    for name in names:
        if name == "off":
            off, notes = method_off(base, object_info)
            out.append(Variant("off", off, notes))
        elif name == "saved":
            method_off(base, object_info)  # a workflow with no Leakless node is refused here too
            out.append(Variant("saved", base))
        else:
            raise EvaluationError(name, "unknown variant.", "use off and/or saved, and --sweep for parameter values.")
    for values in itertools.product(*(s.values for s in swept)) if swept else ():
        label = " ".join(f"{s.text.split('=')[0]}={v}" for s, v in zip(swept, values, strict=True))
        out.append(Variant(label, apply(base, swept, values)))
    if not out:
        raise EvaluationError("variants", "none given.", "pass --variants off,saved and/or --sweep.")
    return out


def _feeds_negative(graph: dict, node_id: str) -> bool:
    frontier, seen = [node_id], set()
    while frontier:
        current = frontier.pop()
        seen.add(current)
        for other_id, other in graph.items():
            for name, value in other["inputs"].items():
                if _is_link(value) and value[0] == current:
                    if name == "negative":
                        return True
                    if other_id not in seen:
                        frontier.append(other_id)
    return False


def prompt_targets(graph: dict) -> list[tuple[str, str]]:
    """(node id, input) pairs that take the prompt: literal `text` inputs and prompt primitives, negatives
    excluded."""
    targets = []
    for node_id, node in graph.items():
        name = PROMPT_SOURCES.get(node["class_type"], "text")
        if isinstance(node["inputs"].get(name), str) and not _feeds_negative(graph, node_id):
            targets.append((node_id, name))
    return targets


def check_targets(graph: dict, where: str) -> None:
    if not prompt_targets(graph):
        raise EvaluationError(where, "no node takes the prompt (a literal 'text' input that is not a negative, or a "
                              "String primitive).", "give the positive prompt's encode node a text widget.")
    if not any(isinstance(n["inputs"].get(s), int) for n in graph.values() for s in SEED_INPUTS):
        raise EvaluationError(where, "no node has a seed or noise_seed widget.", "use a sampler or RandomNoise node.")


def job_graph(graph: dict, row: Row, prefix: str) -> dict:
    """The variant's graph for one row: prompt (marks removed) into every prompt target, the entities into
    DeLeaker Encode, the seed into every seed, and a unique output prefix on every SaveImage."""
    graph = copy.deepcopy(graph)
    for node_id, name in prompt_targets(graph):
        graph[node_id]["inputs"][name] = row.clean
    for node in graph.values():
        inputs = node["inputs"]
        entity = ENTITY_INPUTS.get(node["class_type"])
        if entity and row.entities and isinstance(inputs.get(entity[0]), str):
            inputs[entity[0]] = entity[1].join(row.entities)
        for name in SEED_INPUTS:
            if isinstance(inputs.get(name), int):
                inputs[name] = row.seed
        if node["class_type"] in IMAGE_OUTPUTS:
            inputs["filename_prefix"] = prefix
    return graph
