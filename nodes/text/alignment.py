"""Prompt <-> token alignment for the tokenizers ComfyUI uses (CLIP-L, CLIP-G, T5-XXL).

Every Leakless method needs to know which rows of an encoded prompt belong to which words. This module answers
that without importing ComfyUI: it takes ComfyUI's own family tokenizer (``clip.tokenizer``: SD1Tokenizer,
SDXLTokenizer, FluxTokenizer, ...) by duck typing, lets it tokenize the prompt (so chunking, BOS/EOS/padding,
weights and ``embedding:`` handling are ComfyUI's, not a re-implementation), and attaches to every token the
characters of the prompt it came from.

ComfyUI's rules, as this module relies on them (``comfy/sd1_clip.py``):
- ``(text:1.2)`` / ``(text)`` weight syntax splits the prompt into segments; ``\\(`` and ``\\)`` are literal
  parentheses. Each segment is tokenized on its own; its tokens share one word id (segment index + 1).
- ``embedding:name`` starts a piece of its own (one vector per embedding row when the file exists); the text
  after the name is tokenized as a new word. Where a piece starts and a name ends differ between versions
  (0.3.75: after " " or "\\n", name up to whitespace; 0.33.0: after any whitespace, name up to "<" or "["): the
  rules that reproduce the running tokenizer's output are used, never a version number.
- CLIP: 77-token chunks, each ``BOS ... EOS pad...``; CLIP-L pads with EOS, CLIP-G with id 0. A segment shorter
  than 8 tokens that does not fit moves whole to the next chunk. ``BREAK`` is an ordinary word in core ComfyUI.
- T5: no BOS, one chunk, ``... EOS pad...`` padded to at least 256, never truncated. SentencePiece gives each
  segment its own leading ``\u2581`` (space) piece.
Positions are indices along the encoded sequence: chunk * chunk_length + index for CLIP, plain index for T5.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import re
from dataclasses import dataclass

from ..errors import listed, quoted
from ..registry.families import ENCODER_NAMES, NAMES, Family, family_of_tokenizer

EMBEDDING_PREFIX = "embedding:"
ROWS = "rows"  # the key of PromptAlignment.rows: the CONDITIONING rows, whichever encoders they come from
MAX_CHARS = 20_000  # the longest prompt the token picker route and the Token Inspector show



class PhraseNotFoundError(ValueError):
    """A phrase (or its n-th occurrence) is not in the prompt. The message lists the prompt's words."""


class UnsupportedTokenizerError(ValueError):
    """The CLIP/tokenizer is not one whose token layout Leakless understands."""


class PromptNestingError(ValueError):
    """The prompt's parentheses nest deeper than ComfyUI's (recursive) weight parser can read."""


NESTING = ("the prompt's parentheses nest too deeply for ComfyUI's weight parser (a few hundred levels at most); "
           "remove extra '(' ')' or escape them as \\( \\)")


@dataclass(frozen=True)
class Token:
    position: int  # row index in the encoded sequence
    chunk: int
    token_id: int | None  # None for an embedding vector
    text: str  # as the vocabulary spells it ("cat</w>", "\u2581cat", "<|endoftext|>")
    kind: str  # "bos" | "eos" | "pad" | "template" (an LLM's chat template) | "text" | "embedding"
    weight: float
    segment: int  # ComfyUI word id: segment index + 1, 0 for BOS/EOS/pad
    span: tuple[int, int] | None  # characters of the original prompt, None for BOS/EOS/pad
    word: str  # the prompt word the token belongs to ("" for BOS/EOS/pad)

    @property
    def is_special(self) -> bool:
        return self.kind in ("bos", "eos", "pad", "template")


@dataclass(frozen=True)
class EncoderTokens:
    key: str  # "l", "g", "t5xxl", "qwen25_7b", ... or ROWS
    tokens: tuple[Token, ...]
    chunk_lengths: tuple[int, ...]
    exact: bool  # False if spans are only word- or segment-level (tokenizer without offsets, ids disagreed)
    offset: int = 0  # position of the first token: the CONDITIONING row it is (SD3's T5 rows follow CLIP's)
    rows: bool = True  # its tokens are CONDITIONING rows (False: it only gives the pooled vector)
    label: str = ""  # display name, when not the encoder's (the ROWS view)

    @property
    def name(self) -> str:
        return self.label or ENCODER_NAMES.get(self.key, self.key)

    @property
    def length(self) -> int:
        return len(self.tokens)

    def positions_in(self, start: int, end: int) -> list[int]:
        """Positions of the tokens whose characters overlap prompt characters [start, end)."""
        return [t.position for t in self.tokens if t.span is not None and t.span[0] < end and t.span[1] > start]

    def at(self, position: int) -> Token:
        return self.tokens[position - self.offset]


@dataclass(frozen=True)
class PhraseMatch:
    phrase: str
    occurrence: int  # 1-based
    span: tuple[int, int]  # characters of the original prompt
    positions: dict[str, list[int]]  # encoder key -> token positions
    rows: list[int] | None = None  # the CONDITIONING rows it has (None for an unknown family)

    def of(self, key: str) -> list[int]:
        """Positions in encoder `key`, or with ROWS its CONDITIONING rows."""
        return (self.rows or []) if key == ROWS else self.positions[key]


@dataclass
class PromptAlignment:
    prompt: str
    plain: str  # the prompt as the tokenizer reads it: weight syntax removed, escapes resolved
    plain_to_prompt: list[int]  # index in `prompt` of every character of `plain`
    encoders: dict[str, EncoderTokens]
    word_spans: list[tuple[int, int]]  # words of `plain`, as spans of `plain`
    family: Family | None = None
    rows: EncoderTokens | None = None  # the CONDITIONING rows in order (key ROWS), None for an unknown family
    tokens: dict | None = None  # ComfyUI's tokens, as clip.tokenize returns them: what the nodes encode

    def encoder(self, key: str) -> EncoderTokens:
        """The tokens of encoder `key`, or with ROWS those of the CONDITIONING rows."""
        if key == ROWS:
            if self.rows is None:
                raise UnsupportedTokenizerError("the CLIP is not of a model family Leakless knows")
            return self.rows
        return self.encoders[key]

    def words(self) -> list[str]:
        return [self.plain[s:e] for s, e in self.word_spans]

    def find(self, phrase: str, occurrence: int = 1) -> PhraseMatch:
        """Token positions of the `occurrence`-th match of `phrase` (1-based), in every encoder.

        Matching is case-insensitive, on whole words, across runs of whitespace, and ignores weight syntax:
        "red cat" is found in "a (red:1.2) cat".
        """
        spans = self.find_spans(phrase)
        if occurrence < 1 or occurrence > len(spans):
            where = "is not in the prompt" if not spans else f"occurs {len(spans)} time(s), not {occurrence}"
            words = listed(quoted(w) for w in self.words()) or "(none)"
            raise PhraseNotFoundError(f"{quoted(phrase)} {where}. The prompt's words are: {words}")
        start, end = spans[occurrence - 1]
        positions = {k: enc.positions_in(start, end) for k, enc in self.encoders.items()}
        if not any(positions.values()):
            raise PhraseNotFoundError(f"{quoted(phrase)} is in the prompt but no text encoder reads it (ComfyUI drops "
                                      "the name of an embedding it cannot find); choose another word")
        rows = self.rows.positions_in(start, end) if self.rows is not None else None
        return PhraseMatch(phrase, occurrence, (start, end), positions, rows)

    def find_spans(self, phrase: str) -> list[tuple[int, int]]:
        """Every match of `phrase` as a span of the original prompt."""
        words = phrase.split()
        if not words:
            raise PhraseNotFoundError("an empty phrase cannot be matched; give a word of the prompt")
        pattern = r"(?=(" + r"\s+".join(re.escape(w) for w in words) + "))"
        out, end = [], 0
        for m in re.finditer(pattern, self.plain, flags=re.IGNORECASE):
            s, e = m.span(1)
            if s >= end and self._bounded(s, s - 1) and self._bounded(e, e) and not self._crosses_break(s, e):
                out.append((self.plain_to_prompt[s], self.plain_to_prompt[e - 1] + 1))
                end = e
        return out

    def _bounded(self, i: int, outside: int) -> bool:
        """Whether a match may start or end at plain index `i` (`outside`: the character beyond it): that character
        is not a word character, or two segments meet at `i` (ComfyUI reads '(cat)embedding:x' as 'cat' and
        'embedding:x', so words never span two segments)."""
        return not (0 <= outside < len(self.plain) and re.match(r"\w", self.plain[outside])) or i in self._breaks

    def _crosses_break(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._sorted_breaks, start)
        return i < len(self._sorted_breaks) and self._sorted_breaks[i] < end

    @functools.cached_property
    def _breaks(self) -> set[int]:
        """Plain indices where one word ends and the next starts with no space between (two segments meet)."""
        return {e for _, e in self.word_spans} & set(self._word_starts)

    @functools.cached_property
    def _sorted_breaks(self) -> list[int]:
        return sorted(self._breaks)

    @functools.cached_property
    def _word_starts(self) -> list[int]:
        return [s for s, _ in self.word_spans]

    def word_range(self, span: tuple[int, int] | None) -> tuple[int, int] | None:
        """Indices (first, last) into word_spans of the words holding prompt characters span, or None."""
        return _word_range(self.plain_to_prompt, self.word_spans, self._word_starts, span) if span else None

    def payload(self) -> dict:
        """The tokens per encoder (padding left out) and the words, in a form whose size is linear in the prompt:
        each word once ({"word", "span", "tokens": count per encoder}), and per encoder one list per token field
        ("position", "text", "word": index of the token's first word or None, "weight", "kind")."""
        words = [{"word": self.plain[s:e], "span": [self.plain_to_prompt[s], self.plain_to_prompt[e - 1] + 1],
                  "tokens": dict.fromkeys(self.encoders, 0)} for s, e in self.word_spans]
        encoders = []
        for key, enc in self.encoders.items():
            tokens = [t for t in enc.tokens if t.kind != "pad"]
            first = []
            for t in tokens:
                hit = self.word_range(t.span)
                first.append(hit[0] if hit else None)
                for i in range(hit[0], hit[1] + 1) if hit else ():
                    words[i]["tokens"][key] += 1
            encoders.append({"key": key, "name": enc.name, "length": enc.length, "exact": enc.exact, "rows": enc.rows,
                             "position": [t.position for t in tokens], "text": [t.text for t in tokens],
                             "word": first, "weight": [t.weight for t in tokens], "kind": [t.kind for t in tokens]})
        return {"encoders": encoders, "words": words}

    def table(self) -> list[dict]:
        """Rows (encoder, position, token, word, weight) for display; BOS/EOS kept, padding summarised."""
        rows = []
        for enc in self.encoders.values():
            pads = [t for t in enc.tokens if t.kind == "pad"]
            for t in enc.tokens:
                if t.kind == "pad":
                    continue
                rows.append({"encoder": enc.name, "position": t.position, "token": t.text,
                             "word": "(template)" if t.kind == "template" else t.word, "weight": t.weight,
                             "kind": t.kind})
            if pads:
                first, last = pads[0].position, pads[-1].position
                rows.append({"encoder": enc.name, "position": first, "token": f"<pad x{len(pads)}>",
                             "word": f"positions {first}-{last}", "weight": 1.0, "kind": "pad"})
        return rows


# ----------------------------------------------------------------------------------------------------------
# Segmentation with character offsets (mirrors comfy.sd1_clip.parse_parentheses / token_weights)


def _parse_parentheses(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """ComfyUI's parse_parentheses on text[start:end], returning item spans instead of strings."""
    items = []
    item_start = None
    level = 0
    for i in range(start, end):
        ch = text[i]
        if ch == "(":
            if level == 0:
                if item_start is not None and item_start < i:
                    items.append((item_start, i))
                item_start = i
            level += 1
        elif ch == ")":
            level -= 1
            if level == 0:
                items.append((item_start if item_start is not None else i, i + 1))
                item_start = None
        elif item_start is None:
            item_start = i
    if item_start is not None and item_start < end:
        items.append((item_start, end))
    return items


def _weighted_segments(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """ComfyUI's token_weights on text[start:end]: spans of the segments, in order (weights come from ComfyUI)."""
    out = []
    for s, e in _parse_parentheses(text, start, end):
        if e - s >= 2 and text[s] == "(" and text[e - 1] == ")":
            s, e = s + 1, e - 1
            colon = text.rfind(":", s, e)
            if colon > s:
                try:
                    float(text[colon + 1:e])
                    e = colon
                except ValueError:
                    pass
            out += _weighted_segments(text, s, e)
        else:
            out.append((s, e))
    return out


def _escape(text: str) -> str:
    # Same length as the input, so indices into it are indices into the prompt.
    return text.replace("\\)", "\0\1").replace("\\(", "\0\2")


def _unescape(escaped: str, s: int, e: int) -> tuple[str, list[int]]:
    """Segment text as ComfyUI tokenizes it, with the prompt index of each character."""
    chars, index = [], []
    i = s
    while i < e:
        if escaped[i] == "\0" and i + 1 < e and escaped[i + 1] in "\1\2":
            chars.append(")" if escaped[i + 1] == "\1" else "(")
            index.append(i + 1)
            i += 2
        else:
            chars.append(escaped[i])
            index.append(i)
            i += 1
    return "".join(chars), index


@dataclass
class _Piece:
    text: str
    index: list[int]  # prompt index per character (-1 where ComfyUI inserted a character)


@dataclass(frozen=True)
class _EmbeddingRules:
    """How a ComfyUI version reads ``embedding:`` in a segment (SDTokenizer.tokenize_with_weights and
    _try_get_embedding). Not chosen by version number: the first rule set whose token groups reproduce what the
    running tokenizer returned is used (_matching_groups), so a prompt is read as the running ComfyUI reads it."""

    split: str  # regex of what before ``embedding:`` starts a new piece there; what it matches is dropped
    name_end: str | None  # regex of the character that ends a name (the rest is tokenized as text), or None


# 0.33.0 splits after any whitespace (kept in the piece before) and ends a name at "<" or "["; 0.3.75 splits
# only after " " or "\n" (dropped) and reads the name to the next whitespace. Newest first; every combination,
# for the versions in between.
_RULES = tuple(_EmbeddingRules(split, name_end) for split in (r"(?<=\s)", r"[ \n]") for name_end in (r"[<\[]", None))


def _split_embeddings(segment: _Piece, rules: _EmbeddingRules) -> list[_Piece]:
    """The pieces ComfyUI tokenizes one by one in a segment: the text before each ``embedding:``, and each
    ``embedding:name rest`` up to the next."""
    pieces, last = [], 0
    for m in re.finditer(rules.split + "(?=" + re.escape(EMBEDDING_PREFIX) + ")", segment.text):
        pieces.append(_Piece(segment.text[last:m.start()], segment.index[last:m.start()]))
        last = m.end()
    pieces.append(_Piece(segment.text[last:], segment.index[last:]))
    return [p for p in pieces if p.text]


def _embedding_leftover(piece: _Piece, rules: _EmbeddingRules) -> tuple[int, _Piece]:
    """Split an ``embedding:name rest`` piece as ComfyUI's _try_get_embedding does: (prompt index just after the
    name, the text it tokenizes after the embedding). Words are re-joined with single spaces; the part of the
    name from `rules.name_end` on, then its leading/trailing commas, go back to the text first
    ("embedding:foo, a cat" -> "foo" and ", a cat"), assuming no embedding file is named with the commas."""
    offset = len(EMBEDDING_PREFIX)
    words = [(m.group(), piece.index[offset + m.start():offset + m.end()])
             for m in re.finditer(r"\S+", piece.text[offset:])]
    if not words:
        return piece.index[offset - 1] + 1, _Piece("", [])
    (name, name_index), parts = words[0], words[1:]
    cut = re.search(rules.name_end, name) if rules.name_end else None
    if cut:
        parts = [(name[cut.start():], name_index[cut.start():]), *parts]
        name, name_index = name[:cut.start()], name_index[:cut.start()]
    stripped = name.strip(",")
    if stripped != name:
        parts = [(name[len(stripped):], name_index[len(stripped):]), *(parts or [("", [])])]
    kept = len(name.rstrip(","))
    end = name_index[kept - 1] + 1 if kept else piece.index[offset - 1] + 1
    text, index = "", []
    for i, (t, idx) in enumerate(parts):
        if i:
            text, index = text + " ", index + [-1]
        text, index = text + t, index + idx
    return end, _Piece(text, index)


def _segments(prompt: str, disable_weights: bool) -> list[_Piece]:
    """ComfyUI's weighted segments as it tokenizes them (escapes resolved), with prompt indices."""
    escaped = _escape(prompt)
    spans = [(0, len(prompt))] if disable_weights else _weighted_segments(escaped, 0, len(escaped))
    return [_Piece(*_unescape(escaped, s, e)) for s, e in spans]


# ----------------------------------------------------------------------------------------------------------
# Alignment


def sub_tokenizer(family_tokenizer, key: str):
    """The per-encoder ComfyUI tokenizer (SDTokenizer) behind key 'l', 't5xxl', 'qwen25_7b'... of a family
    tokenizer."""
    for attr in (f"clip_{key}", key):
        sub = getattr(family_tokenizer, attr, None)
        if sub is not None and hasattr(sub, "tokenizer") and hasattr(sub, "tokens_start"):
            return sub
    raise UnsupportedTokenizerError(
        f"the '{key}' text encoder of {type(family_tokenizer).__name__} is not one whose tokens Leakless can "
        f"align; supported families: {NAMES}")


def _hf_ids(sub, text: str, offsets: bool = False):
    """Token ids of `text` exactly as ComfyUI slices them (and their character offsets, if asked)."""
    end = -1 if sub.tokenizer_adds_end_token else None
    enc = sub.tokenizer(text, return_offsets_mapping=True) if offsets else sub.tokenizer(text)
    ids = list(enc["input_ids"])[sub.tokens_start:end]
    return (ids, [tuple(o) for o in enc["offset_mapping"]][sub.tokens_start:end]) if offsets else ids


def _hf_tokens(sub, text: str) -> tuple[list[int], list[tuple[int, int] | None], bool]:
    """(ids, character offsets, exact). Without offset support (slow tokenizers, transformers 4.x, ComfyUI's own
    tekken BPE), offsets come from the tokens' bytes where the vocabulary is byte-level (GPT-2's byte alphabet),
    else from tokenizing word by word when that reproduces the ids (CLIP pre-splits on whitespace), else from the
    whole text."""
    try:
        ids, offsets = _hf_ids(sub, text, offsets=True)
        return ids, offsets, True
    except (NotImplementedError, ValueError, TypeError, KeyError):
        ids = _hf_ids(sub, text)
    offsets = _byte_level_offsets(sub, text, ids) or _sentencepiece_offsets(sub, text, ids)
    if offsets is not None:
        return ids, offsets, True
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    per_word = [(s, e, _hf_ids(sub, text[s:e])) for s, e in words]
    if [i for _, _, w in per_word for i in w] == ids:
        return ids, [(s, e) for s, e, w in per_word for _ in w], False
    return ids, [(0, len(text))] * len(ids), False


@functools.cache
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character that spells each byte in a vocabulary ('Ġ' is a space)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = printable + [256 + i for i in range(256 - len(printable))]
    return {chr(c): b for c, b in zip(chars, printable + [b for b in range(256) if b not in printable], strict=True)}


def _byte_level_offsets(sub, text: str, ids: list) -> list[tuple[int, int]] | None:
    """Character offsets of `ids` from the bytes their byte-level BPE spellings stand for (GPT-2's alphabet), or
    None when the spellings are not byte-level or do not add up to `text` exactly."""
    alphabet = _byte_alphabet()

    def spell(spelling: str, first: bool) -> bytes:
        return bytes(alphabet[c] for c in spelling) if all(c in alphabet for c in spelling) else \
            spelling.encode("utf-8")

    return _spelled_offsets(sub, text, ids, spell, strip_space=False)


def _sentencepiece_offsets(sub, text: str, ids: list) -> list[tuple[int, int]] | None:
    """Character offsets of `ids` from their SentencePiece spellings ('\u2581' a space, '<0xAB>' one byte; ComfyUI's
    SPieceTokenizer has no offsets: Gemma), each without its leading space; None when they do not spell `text`
    exactly (a normalizer changed it)."""
    def spell(spelling: str, first: bool) -> bytes:
        byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", spelling)
        piece = bytes([int(byte[1], 16)]) if byte else spelling.replace("\u2581", " ").encode("utf-8")
        return piece[1:] if first and piece[:1] == b" " and not text.startswith(" ") else piece  # a dummy prefix

    return _spelled_offsets(sub, text, ids, spell, strip_space=True)


def _spelled_offsets(sub, text: str, ids: list, spell, strip_space: bool) -> list[tuple[int, int]] | None:
    """Character offsets of `ids` from the bytes `spell(vocabulary spelling, first token)` says each stands for;
    None when a spelling is missing or they do not add up to `text` exactly. `strip_space`: a token's span leaves
    out the spaces it starts with."""
    vocab = getattr(sub, "inv_vocab", None) or {}
    data = text.encode("utf-8")
    char_of = [i for i, ch in enumerate(text) for _ in ch.encode("utf-8")] + [len(text)]
    out, pos = [], 0
    for token in ids:
        spelling = vocab.get(token)
        if not isinstance(spelling, str):
            return None
        piece = spell(spelling, pos == 0)
        if data[pos:pos + len(piece)] != piece:
            return None
        end = pos + len(piece)
        start = end - len(piece.lstrip(b" ")) if strip_space else pos
        out.append((char_of[start], char_of[end - 1] + 1) if end > start else (char_of[start], char_of[start]))
        pos = end
    return out if pos == len(data) else None


def _same_token(a, b) -> bool:
    # Embedding rows are tensors: compare by identity, ids by value.
    return a == b if isinstance(a, int) and isinstance(b, int) else a is b


def _token_text(sub, token) -> str:
    if not isinstance(token, int):
        return "<embedding>"
    return sub.inv_vocab.get(token, f"<id {token}>")


def _token_groups(sub, segments: list[_Piece], rules: _EmbeddingRules, seen: dict[int, list]):
    """ComfyUI's token groups under `rules`, one per word id: (ids, character spans per id, offsets exact).
    `seen` (ComfyUI's tokens per word id) tells which embeddings ComfyUI found."""
    group_spans: dict[int, list[tuple[int, int] | None]] = {}
    group_ids: dict[int, list] = {}
    embeddings = getattr(sub, "embedding_directory", None) is not None
    exact = True
    wid = 0
    for piece in (p for segment in segments for p in _split_embeddings(segment, rules)):
        text, index = piece.text, piece.index
        if text.startswith(EMBEDDING_PREFIX) and embeddings:
            end, rest = _embedding_leftover(piece, rules)
            if wid + 1 in seen and not isinstance(seen[wid + 1][0], int):  # ComfyUI found the embedding
                wid += 1
                group_spans[wid] = [(index[0], end)] * len(seen[wid])
                group_ids[wid] = seen[wid]
            if not rest.text:
                continue
            text, index = rest.text, rest.index
        wid += 1
        ids, offsets, offsets_exact = _hf_tokens(sub, text)
        exact = exact and offsets_exact
        group_spans[wid] = [_prompt_span(index, off) for off in offsets]
        group_ids[wid] = ids
    return group_ids, group_spans, exact


TEMPLATE_CHAR = -2  # the prompt index of a chat template's character
IN_TEMPLATE = ("template",)  # the span of a token made of template characters only


def _prompt_span(index: list[int], off: tuple[int, int]):
    """The prompt characters of text characters [off[0], off[1]) (index: increasing prompt index per character, -1
    for an inserted one, TEMPLATE_CHAR for a template's), None if there are none, IN_TEMPLATE if they are all the
    template's. O(1) for a token of the prompt: every token of a long word may span the whole word."""
    lo, hi = off[0], min(off[1], len(index))
    if lo < hi and index[lo] == TEMPLATE_CHAR and index[hi - 1] == TEMPLATE_CHAR and all(
            i == TEMPLATE_CHAR for i in index[lo:hi]):
        return IN_TEMPLATE
    while lo < hi and index[lo] < 0:
        lo += 1
    while hi > lo and index[hi - 1] < 0:
        hi -= 1
    return (index[lo], index[hi - 1] + 1) if lo < hi else None


def _matching_groups(sub, segments: list[_Piece], seen: dict[int, list]):
    """_token_groups under the first rule set whose ids reproduce ComfyUI's tokens (else under the newest)."""
    fallback = None
    for rules in _RULES:
        groups = _token_groups(sub, segments, rules, seen)
        ids = {wid: group for wid, group in groups[0].items() if group}
        if ids.keys() == seen.keys() and all(
                len(ids[wid]) == len(toks) and all(map(_same_token, ids[wid], toks)) for wid, toks in seen.items()):
            return groups
        fallback = fallback or groups
    return fallback


def _align_encoder(key: str, sub, chunks, segments: list[_Piece], plain: _PlainText) -> EncoderTokens:
    # 1. Rebuild ComfyUI's list of token groups (one per word id) with character offsets.
    seen = {}
    for chunk in chunks:
        for tok, _w, wid in chunk:
            if wid:
                seen.setdefault(wid, []).append(tok)
    group_ids, group_spans, exact = _matching_groups(sub, segments, seen)

    # 2. Walk ComfyUI's chunks and attach offsets; fall back to the segment span when ids disagree.
    tokens = []
    cursor: dict[int, int] = {}
    whole: dict[int, tuple[int, int] | None] = {}  # span of each group, for tokens whose ids disagree
    position = 0
    for c, chunk in enumerate(chunks):
        end_done = False
        for j, (tok, weight, wid) in enumerate(chunk):
            span = None
            if wid:
                k = cursor.get(wid, 0)
                cursor[wid] = k + 1
                ids, spans = group_ids.get(wid, []), group_spans.get(wid, [])
                same = k < len(ids) and _same_token(ids[k], tok)
                if same and spans[k] is IN_TEMPLATE:
                    tokens.append(Token(position, c, tok, _token_text(sub, tok), "template", float(weight),
                                        int(wid), None, ""))
                    position += 1
                    continue
                if same and spans[k] is not None:
                    span = spans[k]
                else:
                    if wid not in whole:  # once per group: a group can be one long word
                        known = [s for s in spans if s is not None and s is not IN_TEMPLATE]
                        whole[wid] = (min(s[0] for s in known), max(s[1] for s in known)) if known else None
                    span = whole[wid]
                    exact = exact and same
                kind = "text" if isinstance(tok, int) else "embedding"
            elif j == 0 and sub.start_token is not None and tok == sub.start_token:
                kind = "bos"
            elif not end_done and sub.end_token is not None and tok == sub.end_token:
                kind, end_done = "eos", True
            else:
                kind = "pad"
            text = _token_text(sub, tok)
            word = plain.word_at(span) if span else ""
            tokens.append(Token(position, c, tok if isinstance(tok, int) else None, text, kind, float(weight),
                                int(wid), span, word))
            position += 1
    return EncoderTokens(key, tuple(tokens), tuple(len(ch) for ch in chunks), exact)


class _PlainText:
    """The prompt as the tokenizer reads it (weight syntax removed, escapes resolved), and its words."""

    def __init__(self, segments: list[_Piece]):
        self.text = "".join(segment.text for segment in segments)
        self.to_prompt = [i for segment in segments for i in segment.index]  # increasing: segments keep the order
        starts = itertools.accumulate((len(segment.text) for segment in segments), initial=0)
        # words never span two segments: ComfyUI tokenizes each alone ('(cat)embedding:x': 'cat', 'embedding:x')
        self.words = [(start + m.start(), start + m.end()) for segment, start in zip(segments, starts, strict=False)
                      for m in re.finditer(r"\S+", segment.text)]
        self._word_starts = [s for s, _ in self.words]
        self._texts: dict[tuple[int, int], str] = {}  # one string per word range: tokens of a word share it

    def word_at(self, span: tuple[int, int]) -> str:
        """The word(s) holding the prompt characters [span[0], span[1])."""
        hit = _word_range(self.to_prompt, self.words, self._word_starts, span)
        if hit is None:
            return ""
        if hit not in self._texts:
            self._texts[hit] = self.text[self.words[hit[0]][0]:self.words[hit[1]][1]]
        return self._texts[hit]


def _word_range(to_prompt: list[int], words: list[tuple[int, int]], starts: list[int],
                span: tuple[int, int]) -> tuple[int, int] | None:
    """(first, last) indices of the words (spans of the plain text) holding prompt characters [span[0], span[1])."""
    lo, hi = bisect.bisect_left(to_prompt, span[0]), bisect.bisect_left(to_prompt, span[1])
    first = max(bisect.bisect_right(starts, lo) - 1, 0)
    if first < len(words) and words[first][1] <= lo:
        first += 1
    last = bisect.bisect_left(starts, max(hi, lo + 1)) - 1
    return (first, last) if first <= last else None


def align(prompt: str, family_tokenizer, tokenized: dict | None = None, present=None,
          **tokenize_kwargs) -> PromptAlignment:
    """Align every token ComfyUI's tokenizer (``clip.tokenizer``) makes of `prompt` to the prompt.

    `tokenized` is what ``clip.tokenize(prompt, return_word_ids=True)`` returned (tokenized here when None, with
    `tokenize_kwargs` passed to ComfyUI), so positions always match what ``CLIPTextEncode`` encodes. `present`:
    the encoder keys the CLIP's model has (SD3/HiDream loaders may leave some out); None means all.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    family = None
    try:
        if tokenized is None:
            tokenized = family_tokenizer.tokenize_with_weights(prompt, return_word_ids=True, **tokenize_kwargs)
        family = family_of_tokenizer(family_tokenizer, tokenized)
        disable_weights = bool(tokenize_kwargs.get("disable_weights")) or (family is not None and
                                                                           not family.uses_weights)
        segments = _segments(prompt, disable_weights)
    except RecursionError:
        raise PromptNestingError(NESTING) from None
    plain = _PlainText(segments)
    template = getattr(family_tokenizer, "llama_template", None) if family and family.chat_template else None
    encoders = {}
    for key, chunks in tokenized.items():
        if family is not None and key in family.optional:
            continue  # a text derived from the prompt (glyph rows of its quoted phrases): not aligned to it
        sub = sub_tokenizer(family_tokenizer, key)
        enc, prefix = _align_templated(key, sub, chunks, segments, plain, template)
        if family is not None and family.template_prefix_stripped and prefix:
            enc = _strip(enc, prefix)
        encoders[key] = enc
    encoders, rows = _lay_out_rows(encoders, family, present)
    plain_tokens = {k: [[tuple(t[:2]) for t in chunk] for chunk in v] for k, v in tokenized.items()}
    return PromptAlignment(prompt, plain.text, plain.to_prompt, encoders, plain.words, family, rows, plain_tokens)


def _align_templated(key, sub, chunks, segments, plain, template):
    """_align_encoder for an LLM tokenizer that wraps the prompt in `template` ("...{}..."): the template's
    characters map to no prompt character, so their tokens are "template" tokens. Returns (tokens, how many
    tokens the template's part before the prompt has). A prompt whose tokens are reproduced without the template
    (Qwen-Image skips it for a prompt that brings its own) is aligned as it is."""
    if not template or template.count("{}") != 1:
        return _align_encoder(key, sub, chunks, segments, plain), 0
    before, after = template.split("{}")
    wrapped = [_Piece(before + "".join(s.text for s in segments) + after, [TEMPLATE_CHAR] * len(before) + [
        i for s in segments for i in s.index] + [TEMPLATE_CHAR] * len(after))]
    enc = _align_encoder(key, sub, chunks, wrapped, plain)
    if not enc.exact:  # tried only when the template does not reproduce ComfyUI's tokens
        as_is = _align_encoder(key, sub, chunks, segments, plain)
        if as_is.exact:
            return as_is, 0
    return enc, len(_hf_ids(sub, before)) if before else 0


def _strip(enc: EncoderTokens, count: int) -> EncoderTokens:
    """`enc` without its first `count` tokens when they are all template tokens (Qwen-Image's encoder drops the
    rows of the template's system part), positions renumbered from 0."""
    if len(enc.tokens) < count or any(t.kind != "template" for t in enc.tokens[:count]):
        return enc
    tokens = tuple(dataclasses.replace(t, position=t.position - count) for t in enc.tokens[count:])
    return dataclasses.replace(enc, tokens=tokens, chunk_lengths=(len(tokens),))


def _lay_out_rows(encoders: dict[str, EncoderTokens], family: Family | None, present):
    """Number every encoder's tokens by the CONDITIONING row they are (row groups one after another, SD3's T5 after
    its CLIP rows) and build the ROWS view. Encoders outside the row groups keep their own numbering."""
    if family is None:
        return encoders, None
    out, parts, offset = dict(encoders), [], 0
    for group in family.rows:
        keys = [k for k in group if k in encoders and (present is None or k in present)]
        for k in keys:
            enc = encoders[k]
            out[k] = enc if not offset else dataclasses.replace(enc, offset=offset, tokens=tuple(
                dataclasses.replace(t, position=t.position + offset) for t in enc.tokens))
        if keys:
            parts.append(out[keys[0]])
            offset += encoders[keys[0]].length
    for k, enc in encoders.items():
        if k not in family.row_encoders:
            out[k] = dataclasses.replace(enc, rows=False)
    label = " + ".join(enc.name for enc in parts)
    if len(parts) == 1:
        return out, dataclasses.replace(parts[0], key=ROWS, label=label)
    tokens = tuple(t for enc in parts for t in enc.tokens)
    return out, EncoderTokens(ROWS, tokens, tuple(n for enc in parts for n in enc.chunk_lengths),
                              all(enc.exact for enc in parts), label=label)
