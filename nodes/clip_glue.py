"""ComfyUI glue shared by the nodes that read prompts: align, encode and the empty-prompt encoding.

Everything goes through the CLIP object's public methods (tokenize, encode_from_tokens_scheduled), so the
conditioning is exactly what CLIPTextEncode produces, LoRA-patched CLIPs, clip-skip and CLIP hooks included.
"""

from __future__ import annotations

import weakref

from .alignment import NESTING, PromptAlignment, PromptNestingError, UnsupportedTokenizerError, align, sub_tokenizer
from .errors import LeaklessInputError
from .families import NAMES, Family


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

    def get(self, clip, tokens: dict, rows: int):
        """The empty prompt's CONDITIONING with `rows` token rows, for a prompt tokenized as `tokens`."""
        layout = tuple(sorted((k, len(v), len(v[0])) for k, v in tokens.items()))
        key = (getattr(clip.patcher, "patches_uuid", None), clip.layer_idx,
               tuple(sorted(clip.tokenizer_options.items())), layout, rows)
        cacheable = getattr(clip.patcher, "forced_hooks", None) is None
        per_model = self._store.setdefault(clip.cond_stage_model, {}) if cacheable else {}
        if key not in per_model:
            if len(per_model) >= self.MAX_PER_ENCODER:  # bounded: drop the oldest layout
                per_model.pop(next(iter(per_model)))
            per_model[key] = [[_tile_rows(cond, rows), meta]
                              for cond, meta in clip.encode_from_tokens_scheduled(empty_tokens_like(clip, tokens))]
        return per_model[key]


def _tile_rows(cond, rows: int):
    if cond.shape[1] == rows:
        return cond
    if rows % cond.shape[1]:
        raise ValueError(f"cannot lay a {cond.shape[1]}-row empty prompt over {rows} rows")
    return cond.repeat(1, rows // cond.shape[1], 1)


EMPTY_PROMPT = EmptyPromptCache()
