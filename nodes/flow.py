"""Follow the Flow (Kaplan, Toker, Reif, Belinkov, Schwartz, 2025): token tracing and leak patching.

Pure tensor and alignment operations; the ComfyUI glue is ``flow_nodes.py``, the redundant-token predictor
``redundancy.py``. The rule every operation follows (the reference code's): a removed token is neither dropped
nor attention-masked; its row becomes the row **at the same position** of the empty prompt ``""`` encoded at the
**same sequence length**. Sequence length and order never change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .alignment import EncoderTokens, PhraseNotFoundError, PromptAlignment
from .errors import quoted


class SelectionError(ValueError):
    """A selection that cannot be resolved (empty, out of range, malformed)."""


def replace_rows(cond: torch.Tensor, empty: torch.Tensor, positions) -> torch.Tensor:
    """`cond` with the rows (dim -2: [B, L, D], or HiDream's Llama [B, layers, L, D]) at `positions` taken from
    `empty` (same shape). Returns a new tensor."""
    if cond.shape != empty.shape:
        raise ValueError(f"prompt and empty-prompt encodings differ in shape: {tuple(cond.shape)} vs "
                         f"{tuple(empty.shape)}")
    out = cond.clone()
    rows = sorted(set(positions))
    if rows:
        index = torch.tensor(rows, device=cond.device)
        out[..., index, :] = empty[..., index, :].to(device=out.device, dtype=out.dtype)
    return out


def replace_rows_batch(cond: torch.Tensor, empty: torch.Tensor, variants, on_variant=None) -> torch.Tensor:
    """``torch.cat([replace_rows(cond, empty, v) for v in variants])``, written into one tensor as it is built (no
    list of copies beside the batch). ``on_variant()`` is called after each variant (progress, interrupt)."""
    if cond.shape != empty.shape:
        raise ValueError(f"prompt and empty-prompt encodings differ in shape: {tuple(cond.shape)} vs "
                         f"{tuple(empty.shape)}")
    b = cond.shape[0]
    out = cond.new_empty((b * len(variants), *cond.shape[1:]))
    for i, positions in enumerate(variants):
        block = out[i * b:(i + 1) * b]
        block.copy_(cond)
        rows = sorted(set(positions))
        if rows:
            index = torch.tensor(rows, device=cond.device)
            block[..., index, :] = empty[..., index, :].to(device=out.device, dtype=out.dtype)
        if on_variant is not None:
            on_variant()
    return out


def keep_rows(cond: torch.Tensor, empty: torch.Tensor, keep) -> torch.Tensor:
    """Token tracing: every row not in `keep` (EOS and padding included) becomes the empty prompt's row."""
    keep = set(keep)
    return replace_rows(cond, empty, [i for i in range(cond.shape[-2]) if i not in keep])


def paste_rows(cond: torch.Tensor, source: torch.Tensor, source_rows, target_rows) -> torch.Tensor:
    """Leak patching: `cond` with `source`'s rows (dim -2) at `source_rows` written at `target_rows`. Returns a new
    tensor."""
    source_rows, target_rows = list(source_rows), list(target_rows)
    if len(source_rows) != len(target_rows):
        raise ValueError(f"{len(source_rows)} source rows for {len(target_rows)} target rows")
    out = cond.clone()
    if target_rows:
        out[..., torch.tensor(target_rows, device=cond.device), :] = source[..., torch.tensor(source_rows), :].to(
            device=out.device, dtype=out.dtype)
    return out


def following_rows(rows: EncoderTokens, other: EncoderTokens, replaced) -> list[int]:
    """The positions of `other` (HiDream's Llama tokens) replaced when the CONDITIONING rows `replaced` are: a token
    with characters iff every row token whose characters overlap it is replaced (and there is one); a token without
    characters (BOS, padding) iff every row token without characters (EOS, padding) is."""
    replaced = set(replaced)
    charless = [t.position for t in rows.tokens if t.span is None] or [t.position for t in rows.tokens]
    charless_replaced = all(p in replaced for p in charless)
    out = []
    for t in other.tokens:
        if t.span is None:
            hit = charless_replaced
        else:
            overlapping = rows.positions_in(*t.span)
            hit = bool(overlapping) and all(p in replaced for p in overlapping)
        if hit:
            out.append(t.position)
    return out


# ----------------------------------------------------------------------------------------------------------
# Selections: "cow; horse; cow, horse" (subsets by line or ';', parts by ','), "cat#2", "3", "5-7", "@3", '"1984"'
# A bare number is a token position where positions are allowed (Token Trace's selection) and a word elsewhere;
# a quoted part ('"1984"', '"C#"#2') is always a phrase, '@3' / '@5-7' always positions.


@dataclass(frozen=True)
class PhraseRef:
    phrase: str
    occurrence: int = 1
    explicit: bool = field(default=False, compare=False)  # '#n' written: 'round#1' is that occurrence, always
    quoted: bool = field(default=False, compare=False)

    def __str__(self):
        text = f'"{self.phrase}"' if self.quoted else self.phrase
        return f"{text}#{self.occurrence}" if self.explicit or self.occurrence > 1 else text


@dataclass(frozen=True)
class PositionRef:
    start: int
    end: int  # inclusive
    bare: bool = field(default=True, compare=False)  # no "@": a number that is also a word is then an error

    def __str__(self):
        return ("" if self.bare else "@") + (str(self.start) if self.start == self.end else f"{self.start}-{self.end}")


_POSITIONS = re.compile(r"(@)?\s*(\d+)(?:\s*-\s*(\d+))?")
_QUOTED = re.compile(r'"([^"]*)"(?:\s*#\s*(\d+))?')
_OCCURRENCE = re.compile(r"(.*?)\s*#\s*(\d+)")
_DIGIT_AFTER = re.compile(r"\d$")  # '1' then '000': a comma between digits
_DIGIT_BEFORE = re.compile(r"\d")
MARK = re.compile(r"\*\*(.+?)\*\*")  # DeLeaker Encode's and Heatmap Encode's marks (deleaker_nodes.split_marked)


def _split(text: str, separators: str, quotes: bool = True) -> list[str]:
    pieces, start, inside = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"' and quotes:
            inside = not inside
        elif ch in separators and not inside:
            pieces.append(text[start:i])
            start = i + 1
    return [*pieces, text[start:]]


def split_outside_quotes(text: str, separators: str) -> list[str]:
    """`text` split at each of `separators` that is not inside double quotes."""
    text = text or ""
    if text.count('"') % 2:
        raise SelectionError(f"{quoted(text.strip())} has an unclosed '\"'; quote a phrase as \"1984\"")
    return _split(text, separators)


def parts(text: str, separators: str) -> list[str]:
    """The non-blank parts of `text` between `separators` outside double quotes, stripped: what a selection, item
    or entity list holds, counted before any of it is read (an unclosed quote is counted as plain text; the parser
    reports it)."""
    text = text or ""
    pieces = _split(text, separators, quotes=not text.count('"') % 2)
    return [p.strip() for p in pieces if p.strip()]


def _part(part: str, positions: bool, what: str):
    m = _POSITIONS.fullmatch(part)
    if m and (positions or m[1]):
        if not positions:
            raise SelectionError(f"{what} are words of the prompt, not token positions ({quoted(part)})")
        start, end = int(m[2]), int(m[3] or m[2])
        if end < start:
            raise SelectionError(f"{quoted(part)} is an empty range; write the smaller position first")
        return PositionRef(start, end, bare=not m[1])
    in_quotes = _QUOTED.fullmatch(part)
    if in_quotes is None and '"' in part:
        raise SelectionError(f"{quoted(part)}: quotes go around a whole phrase ('\"1984\"', '\"big cat\"#2')")
    m = in_quotes or _OCCURRENCE.fullmatch(part)
    phrase, number = (m[1], m[2]) if m and (in_quotes or m[1]) else (part, None)
    if number is not None and int(number) < 1:
        raise SelectionError(f"{quoted(part)}: occurrences count from 1")
    if not phrase.strip():
        raise SelectionError(f"{quoted(part)} names no word")
    return PhraseRef(phrase.strip(), int(number or 1), number is not None, in_quotes is not None)


def _check_number_commas(pieces: list[str], what: str) -> None:
    """Where nothing is a position, '1,000 cows' would be the phrases '1' and '000 cows': an error that says to
    quote it. `pieces`: a line split at its commas."""
    for i in range(len(pieces) - 1):
        j = i
        while j + 1 < len(pieces) and _DIGIT_AFTER.search(pieces[j]) and _DIGIT_BEFORE.match(pieces[j + 1]):
            j += 1
        if j > i:
            phrase = ",".join(pieces[i:j + 1]).strip()
            split = " and ".join(quoted(p.strip()) for p in pieces[i:j + 1])
            raise SelectionError(
                f"{quoted(phrase)} would be split at its comma into {split}, since a comma separates {what}; write "
                f"\"{phrase}\" in double quotes to keep it one phrase, or put a space after the comma for two")


def _parse(text: str, positions: bool, what: str) -> list[list]:
    subsets = []
    for line in split_outside_quotes(text, ";\n"):
        pieces = split_outside_quotes(line, ",")
        if not positions:
            _check_number_commas(pieces, what)
        refs = [_part(p, positions, what) for p in (p.strip() for p in pieces) if p]
        if refs:
            subsets.append(refs)
    return subsets


def parse_refs(text: str) -> list[list[PhraseRef | PositionRef]]:
    """Parse a selection: one subset per line (or per ';'), parts joined by ','. A part is a phrase of the prompt
    (optionally '#n' for its n-th occurrence; in double quotes to make a number a word: '"1984"') or a token
    position / inclusive range ('12', '5-7'; '@12' when the number is also a word of the prompt)."""
    return _parse(text, True, "")


def parse_phrases(text: str, what: str) -> list[PhraseRef]:
    """A flat list of phrases ('cow, horse', 'bats#2; golden gate', '1984'): `what` (items, entities) are never
    positions, so a bare number is a word here."""
    return [r for subset in _parse(text, False, what) for r in subset]


def find_ref(alignment: PromptAlignment, ref: PhraseRef):
    """alignment.find for a ref; a number that is not in the prompt says it was read as a word."""
    try:
        return alignment.find(ref.phrase, ref.occurrence)
    except PhraseNotFoundError as e:
        if _POSITIONS.fullmatch(ref.phrase) and not ref.quoted:
            raise PhraseNotFoundError(f"{e} ({quoted(ref.phrase)} was read as a word of the prompt, not as a token "
                                      "position; only Leakless Token Trace's selection takes positions)") from None
        raise


def resolve_refs(alignment: PromptAlignment, key: str, refs) -> list[int]:
    """Token positions (in encoder `key`) of a subset of refs, sorted and unique."""
    length = alignment.encoder(key).length
    positions = set()
    for ref in refs:
        if isinstance(ref, PositionRef):
            number = str(ref).lstrip("@")
            if ref.bare and alignment.find_spans(number):
                raise SelectionError(f"{quoted(number)} is read as token position(s) {number}, but {quoted(number)} is "
                                     f"also a word of the prompt; write \"{number}\" for the word, @{number} for the "
                                     "position(s)")
            if ref.end >= length:
                raise SelectionError(f"position {ref.end} is out of range: the {alignment.encoder(key).name} "
                                     f"sequence has {length} positions (0-{length - 1}); {quoted(number)} is read as "
                                     f"token position(s); write \"{number}\" to name a word of the prompt")
            positions.update(range(ref.start, ref.end + 1))
        else:
            found = find_ref(alignment, ref).of(key)
            if not found:
                raise PhraseNotFoundError(f"{quoted(ref)} is not read by the {alignment.encoder(key).name} encoder")
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
    matches = (m for s, e in alignment.word_spans for m in _WORD.finditer(alignment.plain, s, e))
    for m in matches:  # within the words ComfyUI reads: '(red)(cat)' is two
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
        match = find_ref(alignment, ref)
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
