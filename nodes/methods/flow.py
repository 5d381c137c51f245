"""Follow the Flow (Kaplan, Toker, Reif, Belinkov, Schwartz, 2025): token tracing and leak patching.

Pure tensor and alignment operations, and the settings the Follow the Flow nodes share; the nodes are
``trace_nodes.py`` and ``flow_nodes.py``, the prompt they edit ``driver/prompts.py``, the redundant-token predictor
``redundancy.py``. The rule every operation follows (the reference code's): a removed token is neither dropped
nor attention-masked; its row becomes the row **at the same position** of the empty prompt ``""`` encoded at the
**same sequence length**. Sequence length and order never change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..text.alignment import EncoderTokens, PromptAlignment
from ..text.grammar import find_ref, parse_phrases
from .settings import Setting

TRACE_MODES = ("each word", "each token", "selection", "all but selection")
TRACE_MODE = Setting("mode", "choice", TRACE_MODES[0], (
    "'each word': one image per word of the prompt. 'each token': one per token (see Leakless Token Inspector). "
    "'selection': one per line of 'selection'. 'all but selection': each line of 'selection' removed from the full "
    "prompt."), options=TRACE_MODES)
INCLUDE_FULL_PROMPT = Setting("include_full_prompt", "bool", True, (
    "Add the untouched prompt as the first image, to compare against (default {default})."))
POOLED_MODES = ("reference", "prompt", "empty prompt")
POOLED_OUTPUT = Setting("pooled_output", "choice", POOLED_MODES[0], (
    "Which pooled vector goes with edited conditionings. 'reference' does what the paper's code does: FLUX keeps "
    "the full prompt's pooled CLIP-L vector; SDXL uses the empty prompt's pooled vector whenever a token is "
    "replaced; SD1.5 has no pooled input. 'prompt' / 'empty prompt' force one or the other."), options=POOLED_MODES)
EMPTY_PROMPT_MODES = ("as encoded", "attention-masked")
EMPTY_PROMPT_ENCODING = Setting("empty_prompt", "choice", EMPTY_PROMPT_MODES[0], (
    "How the empty prompt whose rows replace removed tokens is encoded. 'as encoded': as CLIPTextEncode encodes \"\" "
    "(the reference code's, read at tokeron/diffusers' lens branch). 'attention-masked': its padding masked out of "
    "the encoder's attention, so from the 3rd row on its rows differ (the reading of an independent check). The LLM "
    "encoders already mask their padding: there both give the same rows."),
    options=EMPTY_PROMPT_MODES, optional=True)  # optional: API prompts saved before it still run


def replace_rows(cond: torch.Tensor, empty: torch.Tensor, positions) -> torch.Tensor:
    """`cond` with the rows (dim -2: [B, L, D], or HiDream's Llama [B, layers, L, D]) at `positions` taken from
    `empty` (same shape). Returns a new tensor."""
    return replace_rows_batch(cond, empty, [positions])


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
