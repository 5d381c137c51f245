"""ComfyUI glue shared by the nodes that read prompts: align, encode and the empty-prompt encoding.

Everything goes through the CLIP object's public methods (tokenize, encode_from_tokens_scheduled), so the
conditioning is exactly what CLIPTextEncode produces, LoRA-patched CLIPs, clip-skip and CLIP hooks included.
"""

from __future__ import annotations

import copy
import itertools
import weakref

from ..errors import LeaklessInputError, input_error
from ..methods.phrases import Phrases
from ..registry.families import NAMES, Family
from ..text import grammar, provenance
from ..text.alignment import (NESTING, ROWS, PhraseNotFoundError, PromptAlignment, PromptNestingError,
                              UnsupportedTokenizerError, align, sub_tokenizer)


def check_interrupt() -> None:
    """Stop here when the user cancelled the run (ComfyUI's Cancel, POST /interrupt): the long loops of the prompt
    nodes call it once per step (a subset, an item, an image)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def progress(total: int):
    """ComfyUI's progress bar over `total` steps of a prompt node's long loop: a step() that stops here when the
    user cancelled (check_interrupt), then ticks the bar once."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def step():
        check_interrupt()
        bar.update(1)

    return step


def check_clip(node: str, clip, input_name: str = "clip"):
    if clip is None:
        raise LeaklessInputError(node, input_name, "no CLIP was given (the checkpoint has no text encoder).",
                                 "connect a CLIP loader output.")


def align_clip(node: str, clip, text: str, input_name: str = "clip") -> PromptAlignment:
    """Tokenize `text` once with the CLIP's own tokenizers and options and align it (positions match
    CLIPTextEncode's rows); ``alignment.tokens`` is what the nodes encode."""
    check_clip(node, clip, input_name)
    try:
        try:
            tokenized = clip.tokenize(text, return_word_ids=True)
        except RecursionError:
            raise PromptNestingError(NESTING) from None
        return align(text, clip.tokenizer, tokenized, _present(clip, tokenized))
    except UnsupportedTokenizerError as e:
        raise LeaklessInputError(node, input_name, str(e), f"use a CLIP of one of: {NAMES}.") from None
    except PromptNestingError as e:
        raise LeaklessInputError(node, "text", str(e)) from None


def _present(clip, tokenized: dict) -> set[str] | None:
    """The tokenizer's encoder keys whose model the CLIP has (SD3's and HiDream's loaders leave some out as None),
    or None when the model names none of them."""
    model = getattr(clip, "cond_stage_model", None)
    keys = {k for k in tokenized if hasattr(model, f"clip_{k}") or hasattr(model, k)}
    if not keys:
        return None
    return {k for k in keys if (getattr(model, f"clip_{k}", None) or getattr(model, k, None)) is not None}


def family_of(node: str, alignment: PromptAlignment, input_name: str = "clip") -> Family:
    if alignment.family is None:
        raise LeaklessInputError(node, input_name, f"its tokenizer ({', '.join(sorted(alignment.encoders))}) is not "
                                 "of a model family Leakless knows.", f"load a CLIP of one of: {NAMES}.")
    return alignment.family


def empty_tokens_like(clip, tokens: dict) -> dict:
    """Tokens of the empty prompt for `tokens`' layout: one CLIP chunk (chunks are encoded independently, so
    longer CLIP prompts tile its rows; see EmptyPromptCache), T5 padded to the prompt's length (what ComfyUI's
    min_length padding gives; T5 attends to its padding, so the length matters)."""
    empty = clip.tokenize("")
    out = {}
    for key, chunks in tokens.items():
        chunk = list(empty[key][0])
        missing = len(chunks[0]) - len(chunk) if len(chunks) == 1 else 0
        if missing > 0:
            pad = sub_tokenizer(clip.tokenizer, key).pad_token
            chunk += [(pad, 1.0)] * missing
        out[key] = [chunk]
    return out


class EmptyPromptCache:
    """Encodings of the empty prompt per text encoder, patch state, clip-skip and token layout.

    Held weakly by the encoder model, so it goes away with the CLIP; CLIPs with scheduled hooks are not cached.
    """

    MAX_PER_ENCODER = 4

    def __init__(self):
        self._store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, clip, tokens: dict, rows: int, masked: bool = False):
        """The empty prompt's CONDITIONING with `rows` token rows, for a prompt tokenized as `tokens`; `masked`:
        encoded with the attention mask over its padding (see masked_clip)."""
        layout = tuple(sorted((k, len(v), len(v[0])) for k, v in tokens.items()))
        key = (getattr(clip.patcher, "patches_uuid", None), clip.layer_idx,
               tuple(sorted(clip.tokenizer_options.items())), layout, rows, masked)
        cacheable = getattr(clip.patcher, "forced_hooks", None) is None
        per_model = self._store.setdefault(clip.cond_stage_model, {}) if cacheable else {}
        if key not in per_model:
            if len(per_model) >= self.MAX_PER_ENCODER:  # bounded: drop the oldest layout
                per_model.pop(next(iter(per_model)))
            encoder = masked_clip(clip) if masked else clip
            per_model[key] = [[_tile_rows(cond, rows), meta]
                              for cond, meta in encoder.encode_from_tokens_scheduled(empty_tokens_like(clip, tokens))]
        return per_model[key]


def masked_clip(clip):
    """A clone of `clip` whose text encoders attend with the attention mask over the padding (ComfyUI's
    `enable_attention_masks`, off for CLIP by default), the given CLIP untouched: its encoder modules are
    shallow copies sharing every weight, so patches, LoRAs and clip-skip apply as usual. None when no encoder of
    it has the switch."""
    def with_masks(module):
        if hasattr(module, "enable_attention_masks"):
            out = copy.copy(module)
            out.__dict__["enable_attention_masks"] = True
            return out
        children = {n: with_masks(m) for n, m in module._modules.items() if m is not None}
        if all(c is module._modules[n] for n, c in children.items()):
            return module
        out = copy.copy(module)
        out.__dict__["_modules"] = {**module._modules, **children}  # its own registry: the original's is not touched
        return out

    model = with_masks(clip.cond_stage_model)
    if model is clip.cond_stage_model:
        return None
    clone = clip.clone()
    clone.cond_stage_model = model
    return clone


def _tile_rows(cond, rows: int):
    if cond.shape[1] == rows:
        return cond
    if rows % cond.shape[1]:
        raise ValueError(f"cannot lay a {cond.shape[1]}-row empty prompt over {rows} rows")
    return cond.repeat(1, rows // cond.shape[1], 1)


EMPTY_PROMPT = EmptyPromptCache()


def encode_phrases(node: str, clip, text: str, listed: str, input_name: str, check_family, count_problem,
                   fix: str, disjoint: bool):
    """Encode `text` (its ** marks removed) and find the phrases `listed` (comma-separated) or marked in it:
    (conditioning, Phrases). `check_family(family)` raises for a CLIP the node cannot use; `count_problem(refs)`
    says what is wrong with the number of phrases (None: nothing); `disjoint`: no token in two phrases."""
    clean, marked = grammar.split_marked(text)
    alignment = align_clip(node, clip, clean)
    family = family_of(node, alignment)
    check_family(family)
    if listed.strip() and marked:
        raise LeaklessInputError(node, input_name, "it is filled in and the text also marks "
                                 f"{input_name} ({', '.join(f'**{p}**' for p, _ in marked)}); only one of them can be "
                                 f"used.", f"clear '{input_name}' to use the marks, or remove the ** marks from the "
                                 "text.")
    try:
        refs = (grammar.parse_phrases(listed, input_name) if listed.strip()
                else [grammar.marked_ref(alignment, p, start) for p, start in marked])
        problem = count_problem(refs)
        if problem:
            raise grammar.SelectionError(problem)
        matches = [grammar.find_ref(alignment, r) for r in refs]
    except (PhraseNotFoundError, grammar.SelectionError) as e:
        raise input_error(node, input_name, e, fix) from None
    positions = tuple(tuple(m.of(ROWS)) for m in matches)
    if disjoint:
        _check_disjoint(node, input_name if listed.strip() else "text", refs, positions, alignment.encoder(ROWS))
    tokens = alignment.tokens
    conditioning, tag = provenance.tag_conditioning(node, clip, tokens, clean,
                                                    clip.encode_from_tokens_scheduled(tokens))
    extra = tuple((encoder, tuple(tuple(m.positions[encoder]) for m in matches), alignment.encoders[encoder].length)
                  for _, encoder in family.extra_rows)
    return conditioning, Phrases(tuple(str(r) for r in refs), positions, alignment.encoder(ROWS).length, tag,
                                 family.id, extra)


def _check_disjoint(node: str, input_name: str, refs, positions, tokens) -> None:
    """No token row may belong to two phrases (DeLeaker separates entities)."""
    for i, j in itertools.combinations(range(len(refs)), 2):
        shared = sorted(set(positions[i]) & set(positions[j]))
        if shared:
            same = positions[i] == positions[j]
            fix = (f"name it once, or, if the prompt has it twice, write '{refs[j].phrase}#2' for its second "
                   "occurrence." if same else "keep one of them, or give each its own words.")
            raise LeaklessInputError(
                node, input_name, f"'{refs[i]}' and '{refs[j]}' "
                f"{'are the same words' if same else 'overlap'}: both hold the token row(s) "
                f"{', '.join(f'{p} ({tokens.at(p).text!r})' for p in shared)}, and a token can belong to one entity "
                "only.", fix)
