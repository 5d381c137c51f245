"""The grammar of everything a user writes to name parts of a prompt (pure: no ComfyUI import): selections
(Token Trace), items (Redundant Token Mask, Leak Patch), manual keeps ('pelican: lic'), entities and words (DeLeaker,
the heatmap), binding groups (ToMe), marks ('a **cow**'), and how a token's spelling is shown. Parsing only reads
text; `find_ref` and `resolve_refs` resolve what was parsed against a prompt's alignment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import quoted
from .alignment import PhraseNotFoundError, PromptAlignment


class SelectionError(ValueError):
    """Text that names parts of a prompt and cannot be read or resolved (empty, out of range, malformed)."""


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
# Marks: 'a **cow** and a **horse**' names phrases inside the prompt itself

MARK = re.compile(r"\*\*(.+?)\*\*")  # DeLeaker Encode's and Heatmap Encode's marks


def split_marked(text: str) -> tuple[str, list[tuple[str, int]]]:
    """'a **cow** and a **horse**' -> ('a cow and a horse', [('cow', 2), ('horse', 12)]): each mark's words and
    where they start in the text without marks."""
    marks = [(m.group(1).strip(), m.start(1) - 2 - 4 * i + len(m.group(1)) - len(m.group(1).lstrip()))
             for i, m in enumerate(MARK.finditer(text))]
    return MARK.sub(lambda m: m.group(1), text), marks


def marked_ref(alignment: PromptAlignment, phrase: str, start: int) -> PhraseRef:
    """The occurrence that was marked: a second **cat** is 'cat#2'."""
    starts = [s for s, _ in alignment.find_spans(phrase)]
    if start not in starts:
        alignment.find(phrase)  # not in the prompt at all: that error
        raise SelectionError(f"'**{phrase}**' marks part of a word; mark whole words")
    return PhraseRef(phrase, starts.index(start) + 1)


# ----------------------------------------------------------------------------------------------------------
# Binding groups (ToMe): 'cat: wearing sunglasses; dog: wearing a hat'


@dataclass(frozen=True)
class GroupSpec:
    noun: PhraseRef
    attributes: tuple[PhraseRef, ...]


def parse_groups(text: str) -> list[GroupSpec]:
    """'cat: wearing sunglasses; dog: wearing a hat, red' -> one group per line or ';': the noun before ':', its
    attributes after it, comma-separated. Each is a phrase of the prompt, optionally 'word#n' (n-th occurrence) or
    quoted ('"1984"')."""
    groups = []
    for line in (p.strip() for p in split_outside_quotes(text, ";\n")):
        if not line:
            continue
        noun, *rest = split_outside_quotes(line, ":")
        if not rest or not noun.strip():
            raise SelectionError(f"'{line}' is not 'noun: attribute, attribute'")
        noun_refs = parse_phrases(noun, "nouns")
        if len(noun_refs) != 1:
            raise SelectionError(f"'{noun.strip()}': one noun per group (a multi-word noun is fine: 'teddy bear')")
        attrs = tuple(parse_phrases(":".join(rest), "attributes"))
        if not attrs:
            raise SelectionError(f"'{line}' has no attributes after ':'")
        groups.append(GroupSpec(noun_refs[0], attrs))
    return groups


# ----------------------------------------------------------------------------------------------------------
# Manual keeps (Redundant Token Mask): 'pelican: lic; golden gate bridge: gate'


def parse_manual(text: str) -> list[tuple[str, list[str]]]:
    """'pelican: lic; golden gate bridge: gate' -> [("pelican", ["lic"]), ("golden gate bridge", ["gate"])]: the
    item before the last ':', the tokens to keep after it (a token's text or its 1-based index in the item)."""
    out = []
    for entry in (e.strip() for e in re.split(r"[;\n]", text or "")):
        if not entry:
            continue
        if ":" not in entry:
            raise SelectionError(f"'{entry}' does not say which tokens to keep; write it as 'item: token' "
                                 "(a token's text or its 1-based index in the item)")
        item, keep = entry.rsplit(":", 1)
        keeps = [k.strip() for k in keep.split(",") if k.strip()]
        if not item.strip() or not keeps:
            raise SelectionError(f"'{entry}' needs an item before ':' and at least one token after it")
        out.append((item.strip(), keeps))
    return out


# ----------------------------------------------------------------------------------------------------------
# Token spellings: how a token is shown and matched


def spelling(text: str) -> str:
    """A token's vocabulary text as read: without SentencePiece's '\u2581', CLIP's '</w>' and byte-level BPE's
    '\u0120' ('\u010a' shown as '\\n')."""
    return text.replace("\u2581", "").replace("</w>", "").replace("\u0120", "").replace("\u010a", "\\n")


LABEL_CHARS = 80  # a longer label ends in '…'


def _shorten(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1].rstrip() + "\u2026"


def ranges(positions) -> str:
    """Token positions as a selection writes them: [3, 5, 6, 7] -> '3, 5-7'."""
    positions = sorted(positions)
    runs, start = [], None
    for i, p in enumerate(positions):
        if start is None:
            start = p
        if i + 1 == len(positions) or positions[i + 1] != p + 1:
            runs.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ", ".join(runs)


def token_label(alignment: PromptAlignment, key: str, positions) -> str:
    """A readable label for a set of tokens: their spellings without SentencePiece's '▁', CLIP's '</w>' and
    byte-level BPE's 'Ġ' ('Ċ' shown as '\\n'; 'bats' on T5: 'bat s'), padding summarised as '<pad xN>', at most
    LABEL_CHARS characters."""
    tokens = [alignment.encoder(key).at(p) for p in positions]
    words = [spelling(t.text) for t in tokens if t.kind != "pad"]
    pads = sum(t.kind == "pad" for t in tokens)
    label = " ".join([w for w in words if w] + ([f"<pad x{pads}>"] if pads else []))
    return _shorten(label or ("(space)" if tokens else "(nothing)"))  # T5's lone '▁' before some words


def selection_label(alignment: PromptAlignment, key: str, refs) -> str:
    """The label of one subset of a selection: each phrase as written, each position range as its tokens."""
    return _shorten(", ".join(str(r) if isinstance(r, PhraseRef) else token_label(alignment, key, range(
        r.start, r.end + 1)) for r in refs))
