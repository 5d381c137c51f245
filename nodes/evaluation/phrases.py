"""Phrases of a prompt as Leakless's nodes read them, without a tokenizer: the syntax of their `entities`,
`words` and `items` inputs ('cow, horse', 'cat#2', '"C#"') and where a phrase is found (whole words, any case,
across runs of whitespace, weight syntax read as ComfyUI reads it). The runner checks each row with these before
the first job; tests/evaluation compares them with the nodes' own parser and alignment."""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK = re.compile(r"\*\*(.+?)\*\*")
_POSITION = re.compile(r"@\s*\d+(?:\s*-\s*\d+)?")
_QUOTED = re.compile(r'"([^"]*)"(?:\s*#\s*(\d+))?')
_OCCURRENCE = re.compile(r"(.*?)\s*#\s*(\d+)")
_NEEDS_QUOTES = re.compile(r'[,;#"\n]')


class PhraseError(ValueError):
    pass


@dataclass(frozen=True)
class Phrase:
    text: str
    occurrence: int = 1

    def __str__(self):
        """As the nodes' inputs take it: quoted when it holds a separator, '#n' after the first occurrence."""
        text = f'"{self.text}"' if _NEEDS_QUOTES.search(self.text) else self.text
        return f"{text}#{self.occurrence}" if self.occurrence > 1 else text


def _split_outside_quotes(text: str, separators: str) -> list[str]:
    if text.count('"') % 2:
        raise PhraseError(f"'{text.strip()}' has an unclosed '\"'")
    parts, start, quoted = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch in separators and not quoted:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _part(part: str) -> Phrase:
    if _POSITION.fullmatch(part):
        raise PhraseError(f"'{part}' is a token position; name words of the prompt")
    quoted = _QUOTED.fullmatch(part)
    if quoted is None and '"' in part:
        raise PhraseError(f"'{part}': quotes go around a whole phrase")
    m = quoted or _OCCURRENCE.fullmatch(part)
    phrase, number = (m[1], m[2]) if m and (quoted or m[1]) else (part, None)
    if number is not None and int(number) < 1:
        raise PhraseError(f"'{part}': occurrences count from 1")
    if not phrase.strip():
        raise PhraseError(f"'{part}' names no word")
    return Phrase(phrase.strip(), int(number or 1))


def parse(text: str) -> list[Phrase]:
    """'cow, horse; "C#"#2' -> its phrases (parts joined by ',', ';' or new lines; a bare number is a word)."""
    return [_part(p.strip()) for line in _split_outside_quotes(text or "", ";\n")
            for p in _split_outside_quotes(line, ",") if p.strip()]


def _weighted(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """ComfyUI's token_weights (comfy/sd1_clip.py) on text[start:end]: the spans of its segments."""
    items, item_start, level = [], None, 0
    for i in range(start, end):
        if text[i] == "(":
            if level == 0:
                if item_start is not None and item_start < i:
                    items.append((item_start, i))
                item_start = i
            level += 1
        elif text[i] == ")":
            level -= 1
            if level == 0:
                items.append((item_start if item_start is not None else i, i + 1))
                item_start = None
        elif item_start is None:
            item_start = i
    if item_start is not None and item_start < end:
        items.append((item_start, end))
    out = []
    for s, e in items:
        if e - s >= 2 and text[s] == "(" and text[e - 1] == ")":
            s, e = s + 1, e - 1
            colon = text.rfind(":", s, e)
            if colon > s:
                try:
                    float(text[colon + 1:e])
                    e = colon
                except ValueError:
                    pass
            out += _weighted(text, s, e)
        else:
            out.append((s, e))
    return out


def _readings(prompt: str) -> list[tuple[str, set[int]]]:
    """(text, indices where two segments meet inside a word) as ComfyUI reads the prompt with weights, and as it
    is (encoders that take no weight syntax). A phrase found in either may work, so only one in neither is
    refused."""
    escaped = prompt.replace("\\)", "\0\1").replace("\\(", "\0\2")
    texts = [escaped[s:e].replace("\0\1", ")").replace("\0\2", "(") for s, e in _weighted(escaped, 0, len(escaped))]
    plain, breaks = "", set()
    for text in texts:
        if plain and text and not plain[-1].isspace() and not text[0].isspace():
            breaks.add(len(plain))
        plain += text
    return [(plain, breaks), (prompt, set())]


def _spans(text: str, breaks: set[int], phrase: str) -> list[tuple[int, int]]:
    words = phrase.split()
    pattern = r"(?=(" + r"\s+".join(re.escape(w) for w in words) + "))"

    def bounded(i: int, outside: int) -> bool:
        return not (0 <= outside < len(text) and re.match(r"\w", text[outside])) or i in breaks

    out, end = [], 0
    for m in re.finditer(pattern, text, flags=re.IGNORECASE):
        s, e = m.span(1)
        if s >= end and bounded(s, s - 1) and bounded(e, e) and not any(s < b < e for b in breaks):
            out.append((s, e))
            end = e
    return out


def find(prompt: str, phrase: Phrase) -> tuple[int, int] | None:
    """Where the phrase's occurrence is, as a span of one reading of the prompt (None: not there)."""
    for text, breaks in _readings(prompt):
        spans = _spans(text, breaks, phrase.text)
        if len(spans) >= phrase.occurrence:
            return spans[phrase.occurrence - 1]
    return None


def count(prompt: str, text: str) -> int:
    return max(len(_spans(t, breaks, text)) for t, breaks in _readings(prompt))


def marked(prompt: str) -> tuple[str, list[Phrase]]:
    """'a **cat** and a **cat**' -> ('a cat and a cat', [cat, cat#2]): each mark as the occurrence it marks."""
    clean, phrases, removed = MARK.sub(r"\1", prompt), [], 0
    for m in MARK.finditer(prompt):
        inner = m.group(1)
        text = inner.strip()
        start = m.start(1) - 2 - removed + len(inner) - len(inner.lstrip())
        removed += 4
        starts = [s for s, _ in _spans(clean, set(), text)] if text else []
        if start not in starts:
            raise PhraseError(f"'**{inner}**' marks part of a word; mark whole words")
        phrases.append(Phrase(text, starts.index(start) + 1))
    return clean, phrases
