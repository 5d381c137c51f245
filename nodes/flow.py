"""Follow the Flow (Kaplan, Toker, Reif, Belinkov, Schwartz, 2025): token tracing and leak patching.

Pure tensor and alignment operations; the ComfyUI glue is ``flow_nodes.py``, the redundant-token predictor
``redundancy.py``. The rule every operation follows (the reference code's): a removed token is neither dropped
nor attention-masked; its row becomes the row **at the same position** of the empty prompt ``""`` encoded at the
**same sequence length**. Sequence length and order never change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .alignment import PhraseNotFoundError, PromptAlignment


class SelectionError(ValueError):
    """A selection that cannot be resolved (empty, out of range, malformed)."""


def replace_rows(cond: torch.Tensor, empty: torch.Tensor, positions) -> torch.Tensor:
    """`cond` with the rows at `positions` taken from `empty` (same shape). Returns a new tensor."""
    if cond.shape != empty.shape:
        raise ValueError(f"prompt and empty-prompt encodings differ in shape: {tuple(cond.shape)} vs "
                         f"{tuple(empty.shape)}")
    out = cond.clone()
    rows = sorted(set(positions))
    if rows:
        index = torch.tensor(rows, device=cond.device)
        out[:, index] = empty[:, index].to(device=out.device, dtype=out.dtype)
    return out


def keep_rows(cond: torch.Tensor, empty: torch.Tensor, keep) -> torch.Tensor:
    """Token tracing: every row not in `keep` (EOS and padding included) becomes the empty prompt's row."""
    keep = set(keep)
    return replace_rows(cond, empty, [i for i in range(cond.shape[1]) if i not in keep])


def paste_rows(cond: torch.Tensor, source: torch.Tensor, source_rows, target_rows) -> torch.Tensor:
    """Leak patching: `cond` with `source[:, source_rows]` written at `target_rows`. Returns a new tensor."""
    source_rows, target_rows = list(source_rows), list(target_rows)
    if len(source_rows) != len(target_rows):
        raise ValueError(f"{len(source_rows)} source rows for {len(target_rows)} target rows")
    out = cond.clone()
    if target_rows:
        out[:, torch.tensor(target_rows, device=cond.device)] = source[:, torch.tensor(source_rows)].to(
            device=out.device, dtype=out.dtype)
    return out


# ----------------------------------------------------------------------------------------------------------
# Selections: "cow; horse; cow, horse" (subsets by line or ';', parts by ','), "cat#2", "3", "5-7"


@dataclass(frozen=True)
class PhraseRef:
    phrase: str
    occurrence: int = 1

    def __str__(self):
        return self.phrase if self.occurrence == 1 else f"{self.phrase}#{self.occurrence}"


@dataclass(frozen=True)
class PositionRef:
    start: int
    end: int  # inclusive

    def __str__(self):
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


def parse_refs(text: str) -> list[list[PhraseRef | PositionRef]]:
    """Parse a selection: one subset per line (or per ';'), parts joined by ','. A part is a phrase of the prompt
    (optionally '#n' for its n-th occurrence) or a token position / inclusive range ('12', '5-7')."""
    subsets = []
    for line in re.split(r"[;\n]", text or ""):
        refs = []
        for part in (p.strip() for p in line.split(",")):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if m:
                start, end = int(m[1]), int(m[2] or m[1])
                if end < start:
                    raise SelectionError(f"'{part}' is an empty range; write the smaller position first")
                refs.append(PositionRef(start, end))
                continue
            m = re.fullmatch(r"(.*?)\s*#\s*(\d+)", part)
            if m and m[1]:
                if int(m[2]) < 1:
                    raise SelectionError(f"'{part}': occurrences count from 1")
                refs.append(PhraseRef(m[1], int(m[2])))
            else:
                refs.append(PhraseRef(part))
        if refs:
            subsets.append(refs)
    return subsets


def parse_phrases(text: str, what: str) -> list[PhraseRef]:
    """A flat list of phrases ('cow, horse', 'bats#2; golden gate'): `what` (items, entities) are never positions."""
    refs = [r for subset in parse_refs(text) for r in subset]
    for ref in refs:
        if isinstance(ref, PositionRef):
            raise SelectionError(f"{what} are words of the prompt, not token positions ('{ref}')")
    return refs


def resolve_refs(alignment: PromptAlignment, key: str, refs) -> list[int]:
    """Token positions (in encoder `key`) of a subset of refs, sorted and unique."""
    length = alignment.encoder(key).length
    positions = set()
    for ref in refs:
        if isinstance(ref, PositionRef):
            if ref.end >= length:
                raise SelectionError(f"position {ref.end} is out of range: the {alignment.encoder(key).name} "
                                     f"sequence has {length} positions (0-{length - 1})")
            positions.update(range(ref.start, ref.end + 1))
        else:
            found = alignment.find(ref.phrase, ref.occurrence).of(key)
            if not found:
                raise PhraseNotFoundError(f"'{ref}' is not read by the {alignment.encoder(key).name} encoder")
            positions.update(found)
    return sorted(positions)


# ----------------------------------------------------------------------------------------------------------
# Lexical items


@dataclass(frozen=True)
class Item:
    label: str
    span: tuple[int, int]  # characters of the prompt
    positions: tuple[int, ...]  # token positions in the encoder the diffusion model reads


_WORD = re.compile(r"\w(?:[\w'\u2019\-]*\w)?")


def lexical_items(alignment: PromptAlignment, key: str) -> list[Item]:
    """The prompt's words (punctuation around them excluded; hyphenated words and contractions kept whole) with
    their token positions. Multi-word expressions are items only when the user names them."""
    enc = alignment.encoder(key)
    items = []
    for m in _WORD.finditer(alignment.plain):
        start = alignment.plain_to_prompt[m.start()]
        end = alignment.plain_to_prompt[m.end() - 1] + 1
        positions = tuple(enc.positions_in(start, end))
        if positions:
            items.append(Item(m.group(), (start, end), positions))
    return items


def named_items(alignment: PromptAlignment, key: str, text: str) -> list[Item]:
    """Items the user named ("golden gate bridge; bats#2"), in prompt order. Empty text: every lexical item."""
    refs = parse_phrases(text, "items")
    if not refs:
        return lexical_items(alignment, key)
    items = []
    for ref in refs:
        match = alignment.find(ref.phrase, ref.occurrence)
        items.append(Item(str(ref), match.span, tuple(match.of(key))))
    return sorted(items, key=lambda it: it.span)


LABEL_CHARS = 80  # a longer label ends in '…'


def _shorten(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1].rstrip() + "\u2026"


def token_label(alignment: PromptAlignment, key: str, positions) -> str:
    """A readable label for a set of tokens: their spellings without SentencePiece's '▁', CLIP's '</w>' and
    byte-level BPE's 'Ġ' ('Ċ' shown as '\\n'; 'bats' on T5: 'bat s'), padding summarised as '<pad xN>', at most
    LABEL_CHARS characters."""
    tokens = [alignment.encoder(key).at(p) for p in positions]
    words = [t.text.replace("\u2581", "").replace("</w>", "").replace("\u0120", "").replace("\u010a", "\\n")
             for t in tokens if t.kind != "pad"]
    pads = sum(t.kind == "pad" for t in tokens)
    label = " ".join([w for w in words if w] + ([f"<pad x{pads}>"] if pads else []))
    return _shorten(label or ("(space)" if tokens else "(nothing)"))  # T5's lone '▁' before some words


def selection_label(alignment: PromptAlignment, key: str, refs) -> str:
    """The label of one subset of a selection: each phrase as written, each position range as its tokens."""
    return _shorten(", ".join(str(r) if isinstance(r, PhraseRef) else token_label(alignment, key, range(
        r.start, r.end + 1)) for r in refs))
