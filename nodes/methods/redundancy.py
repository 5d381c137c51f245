"""Redundant-token prediction for Follow the Flow: which tokens of a multi-token item carry nothing.

Three ways to decide, all returning the positions to remove (never a single-token item's token, never all tokens of
an item, never BOS/EOS/padding, which are not part of any item):
- manual: the user names the tokens to keep ("pelican: lic", "golden gate bridge: gate", "pelican: 2");
- causal rule: keep the last token of each item (the paper's finding for causal encoders such as CLIP);
- classifier: a k-NN (cosine) or linear probe over the token features the diffusion model reads, stored in a small
  .safetensors file. The paper reports 92% precision of the redundant class for its k-NN (v1) and 90% for its
  linear probe (ACL), both on FLUX-schnell; neither set of weights nor data was published, so any file here is
  trained by the user with ``redundancy_cli``.
Pure PyTorch; no ComfyUI import.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field

import torch

from ..errors import listed, quoted
from ..text.grammar import spelling
from .flow import Item
from .settings import Setting

MODES = ("causal rule", "manual", "classifier")
MODE = Setting("mode", "choice", MODES[0], (
    "'causal rule': keep the last token of each item (the paper's finding for causal encoders, i.e. CLIP and the "
    "LLM encoders; not for T5). 'manual': keep the tokens you name in 'items'. 'classifier': a k-NN or linear "
    "classifier file from models/leakless/."), options=MODES)
THRESHOLD = Setting("threshold", "float", 0.5, (
    "Classifier mode: a token is redundant when its score is above this (default {default}). Raise it to remove "
    "fewer tokens."), min=0.0, max=1.0, step=0.01)

META_KEY = "leakless.redundancy"


class RedundancyError(ValueError):
    pass


class ClassifierMismatchError(RedundancyError):
    """The classifier was trained on another text encoder (feature width)."""


def _norm_token(text: str) -> str:
    return spelling(text).lower()


@dataclass
class Decision:
    item: Item
    keep: tuple[int, ...]
    remove: tuple[int, ...]
    note: str = ""


def causal_rule(items: list[Item]) -> list[Decision]:
    return [Decision(it, it.positions[-1:], it.positions[:-1]) if len(it.positions) > 1
            else Decision(it, it.positions, (), "single token") for it in items]


def manual_rule(item: Item, keeps: list[str], token_texts: list[str]) -> Decision:
    """Keep the named tokens of `item` (texts matched without '\u2581'/'</w>', case-insensitive; '"9"' quoted is
    always a text) or 1-based indices ('2', '#2' always an index); remove the rest."""
    chosen = set()
    for k in keeps:
        index = re.fullmatch(r"#?\s*(\d+)", k)
        if index and not k.startswith("#") and any(_norm_token(t) == k for t in token_texts):
            raise RedundancyError(f"'{k}' is read as token {k} of {quoted(item.label)} (a 1-based index), but '{k}' is "
                                  f"also one of its tokens; write #{k} for the index, \"{k}\" for the token")
        if index:
            i = int(index[1])
            if not 1 <= i <= len(item.positions):
                raise RedundancyError(f"{quoted(item.label)} has {len(item.positions)} token(s); there is no token {i}")
            chosen.add(item.positions[i - 1])
            continue
        k = k[1:-1] if len(k) > 1 and k[0] == k[-1] == '"' else k
        hits = [p for p, t in zip(item.positions, token_texts, strict=True) if _norm_token(t) == _norm_token(k)]
        if not hits:
            raise RedundancyError(f"{quoted(item.label)} has no token {quoted(k)}; its tokens are "
                                  f"{listed(repr(t) for t in token_texts)}")
        chosen.update(hits)
    keep = tuple(p for p in item.positions if p in chosen)
    return Decision(item, keep, tuple(p for p in item.positions if p not in chosen))


# ----------------------------------------------------------------------------------------------------------
# Classifiers


@dataclass
class RedundancyClassifier:
    kind: str  # "knn" | "linear"
    width: int
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.meta.get("k", 7))

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Redundancy score in [0, 1] per row of `features` ([N, width])."""
        if features.shape[-1] != self.width:
            raise ClassifierMismatchError(f"the classifier was trained on {self.width}-wide token features "
                                  f"({self.meta.get('family', '?')} {self.meta.get('encoder', '?')}) but this "
                                  f"text encoder gives {features.shape[-1]}-wide ones")
        x = torch.nn.functional.normalize(features.float(), dim=-1)
        if self.kind == "knn":
            bank = self.tensors["features"].float()
            labels = self.tensors["labels"].float()
            k = min(self.k, bank.shape[0])
            nearest = (x @ bank.T).topk(k, dim=-1).indices
            return labels[nearest].mean(dim=-1)
        return torch.sigmoid(x @ self.tensors["weight"].float() + self.tensors["bias"].float())

    def decide(self, items: list[Item], features: torch.Tensor,
               threshold: float = THRESHOLD.default) -> list[Decision]:
        """`features` holds one row per sequence position. Items of one token are never touched; if every token
        of an item scores redundant, the least redundant one is kept."""
        out = []
        for it in items:
            if len(it.positions) < 2:
                out.append(Decision(it, it.positions, (), "single token"))
                continue
            s = self.scores(features[list(it.positions)])
            redundant = [p for p, v in zip(it.positions, s.tolist(), strict=True) if v > threshold]
            note = ""
            if len(redundant) == len(it.positions):
                best = it.positions[int(s.argmin())]
                redundant.remove(best)
                note = "every token scored redundant; kept the least redundant"
            keep = tuple(p for p in it.positions if p not in redundant)
            out.append(Decision(it, keep, tuple(redundant), note))
        return out


def fit_knn(features: torch.Tensor, labels: torch.Tensor, k: int, meta: dict | None = None) -> RedundancyClassifier:
    bank = torch.nn.functional.normalize(features.float(), dim=-1).contiguous()
    return RedundancyClassifier("knn", bank.shape[-1], {"features": bank, "labels": labels.float().contiguous()},
                                {**(meta or {}), "k": int(k)})


def fit_linear(features: torch.Tensor, labels: torch.Tensor, steps: int = 500, lr: float = 0.05,
               weight_decay: float = 1e-4, meta: dict | None = None) -> RedundancyClassifier:
    """Logistic regression (one linear layer) on L2-normalised features, full batch, deterministic."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    y = labels.float()
    w = torch.zeros(x.shape[-1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
            loss.backward()
            opt.step()
    return RedundancyClassifier("linear", x.shape[-1], {"weight": w.detach().clone(), "bias": b.detach().clone()},
                                dict(meta or {}))


def redundant_precision(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Precision of the redundant class (label 1): of the tokens predicted redundant, how many are."""
    predicted, labels = predicted.bool(), labels.bool()
    chosen = int(predicted.sum())
    return float((predicted & labels).sum()) / chosen if chosen else float("nan")


def split_by_item(item_ids: list, train_fraction: float = 0.8, seed: int = 0) -> tuple[list[int], list[int]]:
    """Row indices of a train/test split in which no item has rows on both sides."""
    unique = sorted(set(item_ids), key=str)
    random.Random(seed).shuffle(unique)
    cut = max(1, min(len(unique) - 1, round(len(unique) * train_fraction)))
    train_items = set(unique[:cut])
    train = [i for i, it in enumerate(item_ids) if it in train_items]
    test = [i for i, it in enumerate(item_ids) if it not in train_items]
    return train, test


def save(clf: RedundancyClassifier, path: str) -> None:
    import safetensors.torch

    meta = {**clf.meta, "kind": clf.kind, "width": clf.width}
    safetensors.torch.save_file({k: v.contiguous() for k, v in clf.tensors.items()}, path,
                                metadata={META_KEY: json.dumps(meta)})


def load(path: str) -> RedundancyClassifier:
    """Read a classifier file written by ``save``. Anything else (not safetensors, no or bad metadata, tensors that
    disagree with it) is a RedundancyError naming the file and what is wrong."""
    import safetensors
    import safetensors.torch

    def bad(problem: str) -> RedundancyError:
        return RedundancyError(f"{path} {problem}")

    if os.path.getsize(path) == 0:
        raise bad("is empty (0 bytes)")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        tensors = safetensors.torch.load_file(path, device="cpu")
    except safetensors.SafetensorError as e:
        raise bad(f"is not a readable .safetensors file ({e})") from None
    if raw is None:
        raise bad(f"is not a Leakless redundancy classifier (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise bad(f"has '{META_KEY}' metadata that is not JSON: {raw[:80]!r}") from None
    if not isinstance(meta, dict):
        raise bad(f"has '{META_KEY}' metadata that is not a JSON object: {raw[:80]!r}")
    kind, width, k = meta.get("kind"), meta.get("width"), meta.get("k", 7)
    if kind not in ("knn", "linear"):
        raise bad(f"has metadata 'kind' {kind!r}; it must be 'knn' or 'linear'")
    for name, value in (("width", width), ("k", k)):
        if type(value) is not int or value < 1:
            raise bad(f"has metadata '{name}' {value!r}; it must be a whole number of at least 1")
    shapes = {"features": f"[N, {width}]", "labels": "[N]"} if kind == "knn" else {"weight": f"[{width}]",
                                                                                    "bias": "[1]"}
    missing = [n for n in shapes if n not in tensors]
    if missing:
        raise bad(f"lacks the tensors {missing}")
    n = (tensors["features"].shape or [None])[0] if kind == "knn" else None
    wanted = {"features": (n, width), "labels": (n,), "weight": (width,), "bias": (1,)}
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != wanted[name] or n == 0:
            raise bad(f"has a '{name}' tensor of shape {list(t.shape)}; its metadata ('kind' {kind}, 'width' "
                      f"{width}) needs {shape}" + (" with N of at least 1" if kind == "knn" else ""))
        if not torch.isfinite(t.float()).all():
            raise bad(f"has NaN or infinite values in its '{name}' tensor")
    return RedundancyClassifier(kind, width, tensors, meta)
