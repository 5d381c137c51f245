"""Which prompt a conditioning was encoded from: a tag that Leakless's encoding nodes put in every CONDITIONING
entry they output, checked by the nodes that tie token positions to one prompt (DeLeaker, ToMe, Leak Patch's
`conditioning` input).

The tag is a digest of the tokenized prompt (every encoder's token ids and weights) and of the text encoder's
type, so the same prompt encoded again with the same CLIP gets the same tag, and another prompt never does, even
at the same padded length. It lives in the entry's dict under KEY: ComfyUI's conditioning nodes copy that dict
(FluxGuidance, ConditioningSetTimestepRange, the area and mask nodes, ReferenceLatent) or concatenate entries
(ConditioningCombine), the guider keeps it (sampler_helpers.convert_cond copies the dict), and models ignore
keys they do not read (extra_conds(**kwargs)). Nothing here imports ComfyUI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..errors import LeaklessInputError, quoted
from ..registry.families import ENCODER_NAMES, family_of_tokenizer

KEY = "leakless_prompt"
# transformer_options key, set per sampling by the driver's prompt check: tag digest -> uuids of the positive entries
# that carry it (ComfyUI puts each batch chunk's entry uuid in transformer_options["uuids"]).
UUIDS_KEY = "leakless_prompt_uuids"


@dataclass(frozen=True)
class PromptTag:
    """Two tags are equal when their digests are: the text, node and encoder are only for messages."""

    digest: str
    rows: int  # token rows of the encoding (ConditioningConcat changes them)
    text: str = field(compare=False)
    node: str = field(compare=False)
    encoder: str = field(default="", compare=False)  # "FLUX.2 Klein's text encoder (Qwen3-4B)"
    family: str = field(default="", compare=False)  # "FLUX.2 Klein"; "" when not a family Leakless knows

    @property
    def quoted(self) -> str:
        return quoted(self.text)

    def __str__(self) -> str:
        return f"{self.quoted} (encoded by {self.node})"


def _canon(value) -> str:
    """A stable spelling of tokenizer output: ids, weights, embedding tensors, nested lists and dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_canon(k)}:{_canon(value[k])}" for k in sorted(value, key=repr)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canon(v) for v in value) + "]"
    if torch.is_tensor(value):
        return f"T{tuple(value.shape)}{_canon(value.detach().float().cpu().flatten().tolist())}"
    return repr(value)


def prompt_tag(node: str, clip, tokens: dict, text: str, rows: int) -> PromptTag:
    """The tag of `text` tokenized as `tokens` (what clip.tokenize returned) by `clip`."""
    encoder = type(getattr(clip, "cond_stage_model", clip)).__qualname__
    digest = hashlib.sha256(_canon([encoder, sorted(tokens.items())]).encode()).hexdigest()[:32]
    family = family_of_tokenizer(getattr(clip, "tokenizer", None), tokens)
    if family is None:
        return PromptTag(digest, rows, text, node, f"the text encoder {encoder}")
    names = " + ".join(ENCODER_NAMES.get(k, k) for k in family.encoders)
    return PromptTag(digest, rows, text, node, f"{family.name}'s text encoder ({names})", family.name)


def _same_text(tag: PromptTag, other: PromptTag, other_what: str, tag_what: str) -> str:
    """Why `other`, a tag of the same text as `tag`, is another one, for a message ('' when the texts differ):
    another text encoder (the same words give other token rows there), or other tokens (another tokenizer)."""
    if other.text != tag.text:
        return ""
    if other.encoder == tag.encoder:
        return " The text is the same, but it was tokenized differently (another tokenizer, or its options)."
    return (f" It is the same text, encoded by another text encoder: {other_what} by {other.encoder}, {tag_what} by "
            f"{tag.encoder}; the same words give other token rows in another encoder.")


def _encoder_fix(tags: list[PromptTag], fix: str) -> str:
    """`fix`, after saying which text encoder each model of the families of `tags` reads."""
    models = list(dict.fromkeys(f"a {t.family} model reads {t.encoder}" for t in tags if t.family))
    if not models:
        return fix
    return f"encode the prompt with the text encoder of the model you sample ({'; '.join(models)}); then {fix}"


def tag_conditioning(node: str, clip, tokens: dict, text: str, conditioning: list) -> tuple[list, PromptTag]:
    """`conditioning` (the encoding of `tokens`) with every entry tagged, and the tag."""
    tag = prompt_tag(node, clip, tokens, text, conditioning[0][0].shape[1])
    return [[c, {**meta, KEY: tag}] for c, meta in conditioning], tag


def tag_of(meta: dict) -> PromptTag | None:
    tag = meta.get(KEY)
    return tag if isinstance(tag, PromptTag) else None


def _what(tags: list[PromptTag | None]) -> str:
    """What a conditioning holds, for messages."""
    parts = [str(t) if t is not None else "a conditioning without a Leakless prompt tag (CLIPTextEncode's or "
             "another node's)" for t in tags]
    return parts[0] if len(parts) == 1 else f"{len(parts)} entries: " + "; ".join(parts)


def check_entries(node: str, input_name: str, tag: PromptTag, entries: list[tuple[PromptTag | None, int]],
                  maker: str, fix: str, every_entry: bool) -> list[int]:
    """Which of `entries` ((tag, token rows) per CONDITIONING entry) come from `tag`'s prompt. `every_entry`:
    all must (the user of the tag edits every entry); otherwise at least one must, and the others are left alone.
    Entries that carry the tag must still have its token rows. Returns the indices of the tagged entries."""
    what = f"the one from {maker} ({tag.quoted})"
    tags = [t for t, _ in entries]
    if not entries:
        raise LeaklessInputError(node, input_name, f"the positive prompt the sampler sees is empty, not {what}.", fix)
    ours = [i for i, t in enumerate(tags) if t == tag]
    if not ours or (every_entry and len(ours) < len(entries)):
        rule = " Every entry must be, since all of them are edited." if ours else ""
        same = next((t for t in tags if t is not None and t != tag and t.text == tag.text), None)
        why = _same_text(tag, same, "the positive prompt", f"the one from {maker}") if same else ""
        if same is not None and same.encoder != tag.encoder:
            fix = _encoder_fix([same, tag], fix)
        raise LeaklessInputError(node, input_name, f"the positive prompt the sampler sees is not {what}: it is "
                                 f"{_what(tags)}.{why}{rule}", fix)
    for i in ours:
        if entries[i][1] != tag.rows:
            raise LeaklessInputError(node, input_name, f"the positive prompt {tag} has {entries[i][1]} token "
                                     f"rows instead of the {tag.rows} it was encoded with (ConditioningConcat?), so "
                                     "its token positions changed.", fix)
    return ours


def same_encoding(cond: torch.Tensor, fresh: torch.Tensor) -> bool:
    """Whether `cond` (any batch) holds the rows of `fresh` (a new encoding of the same tokens), to rounding."""
    if cond.shape[1:] != fresh.shape[1:]:
        return False
    fresh = fresh[:1].to(cond).expand_as(cond)
    scale = float(fresh.abs().max()) if fresh.numel() else 0.0
    return bool(((cond - fresh).abs() <= 1e-4 * scale + 1e-6).all())


def check_conditioning(node: str, input_name: str, tag: PromptTag, conditioning: list, encode, fix: str):
    """Every entry of `conditioning` must be the encoding of `tag`'s prompt: tagged with it, or untagged with the
    rows of a new encoding (`encode()`, called once if needed), as CLIPTextEncode's output of the same text is."""
    fresh = None
    for i, (cond, meta) in enumerate(conditioning):
        found = tag_of(meta)
        if found == tag:
            continue
        if found is None:
            fresh = fresh or encode()
            if same_encoding(cond, fresh[min(i, len(fresh) - 1)][0]):
                continue
            problem = f"its rows differ from the encoding of {tag.quoted} with this CLIP."
        else:
            problem = f"it was encoded from {found}, not from {tag.quoted}.{_same_text(tag, found, 'it', 'this CLIP')}"
            if found.text == tag.text and found.encoder != tag.encoder:
                fix = _encoder_fix([found, tag], fix)
        entry = "it" if len(conditioning) == 1 else f"entry {i + 1} of {len(conditioning)}"
        raise LeaklessInputError(node, input_name, f"{entry} is not this text's encoding: {problem}", fix)
