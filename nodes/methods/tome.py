"""ToMe, token merging for semantic binding (Hu et al., NeurIPS 2024), as the reference code implements it.

Pure PyTorch, no ComfyUI: the composite tokens, end-token substitution, the entropy loss on cross-attention maps,
the pose prior, the step-size / threshold / iteration schedules, and a context that lets autograd run through
weights created under ``torch.inference_mode`` without copying them. The sampling loop lives in tome_nodes.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from ..errors import listed, quoted
from ..text.alignment import PromptAlignment
from ..text.grammar import PhraseRef, SelectionError, find_ref
from .settings import Setting

REFERENCE_NOUN_WEIGHT = 1.1
REFERENCE_ATTRIBUTE_WEIGHT = 1.2
# Entropy thresholds of the reference config for steps 0..9 of 50 (the first 20%).
REFERENCE_THRESHOLDS = (26.0, 25.0, 24.0, 23.0, 22.5, 22.0, 21.5, 21.0, 21.0, 21.0)
REFERENCE_STEPS = 50
POSE_TARGETS = ((10.0, 16.0), (25.0, 16.0))  # reference pose prior, on a 32x32 grid (x, y)
POSE_GRID = 32
NOUN_WEIGHT = Setting("noun_weight", "float", REFERENCE_NOUN_WEIGHT, (
    "Composite = noun_weight x noun rows + attribute_weight x attribute rows. {default} is the reference code's; 1.0 "
    "with attribute_weight 1.0 is the paper's plain sum."), 0.0, 3.0, 0.05)
ATTRIBUTE_WEIGHT = Setting("attribute_weight", "float", REFERENCE_ATTRIBUTE_WEIGHT, (
    "{default} is the reference code's (see noun_weight)."), 0.0, 3.0, 0.05)
END_TOKEN_SUBSTITUTION = Setting("end_token_substitution", "float", 0.0, (
    "From this fraction of the sampling on, the end token and padding rows come from the clean prompt, so they stop "
    "carrying the attributes. {default} = from the start (reference, object binding); 1 = off (reference, attribute "
    "binding); in between uses ComfyUI's timestep ranges, like ConditioningSetTimestepRange."), 0.0, 1.0, 0.01)


@dataclass(frozen=True)
class Group:
    """One binding group: the noun's token rows, its attributes' rows, and the anchor phrase (its prompt text)."""

    noun: tuple[int, ...]
    attributes: tuple[int, ...]
    anchor: str = ""
    noun_text: str = ""

    @property
    def rows(self) -> tuple[int, ...]:
        return self.noun + self.attributes


def merge_tokens(cond: torch.Tensor, groups, noun_weight: float = REFERENCE_NOUN_WEIGHT,
                 attribute_weight: float = REFERENCE_ATTRIBUTE_WEIGHT) -> torch.Tensor:
    """Composite tokens on a [B, T, D] conditioning (a new tensor; `cond` is not changed).

    Per group: noun_weight * sum(noun rows) + attribute_weight * sum(attribute rows) is written at the first noun
    row; the group's other rows become zero; every position is kept. Groups are merged in order, each from the rows
    as the previous groups left them (the reference code's in-place loop).
    """
    out = cond.clone()
    for g in groups:
        composite = noun_weight * out[:, list(g.noun)].sum(1) + attribute_weight * out[:, list(g.attributes)].sum(1)
        out[:, list(g.rows[1:])] = 0
        out[:, g.noun[0]] = composite
    return out


def substitute_end_tokens(cond: torch.Tensor, clean: torch.Tensor, start: int) -> torch.Tensor:
    """Rows from `start` (the end token) onward taken from the clean prompt's encoding `clean` (same layout)."""
    if clean.shape[1:] != cond.shape[1:]:
        raise ValueError(f"clean prompt encoding {tuple(clean.shape)} does not match the prompt's {tuple(cond.shape)}")
    out = cond.clone()
    out[:, start:] = clean[:, start:].to(out)
    return out


def token_softmax(maps: torch.Tensor, prompt_end: int, temperature: float = 0.5) -> torch.Tensor:
    """[B, h, w, T] averaged cross-attention maps -> softmax over the prompt tokens 1..prompt_end-1 (no start, end
    or padding tokens) at `temperature`; the result's last axis index i is token i + 1."""
    return torch.softmax(maps[..., 1:prompt_end].float() / temperature, dim=-1)


def _minmax_noun_maps(maps, nouns, prompt_end, temperature, eps):
    tokens = token_softmax(maps, prompt_end, temperature)[..., [n - 1 for n in nouns]]
    low, high = tokens.amin(dim=(1, 2), keepdim=True), tokens.amax(dim=(1, 2), keepdim=True)
    return (tokens - low) / (high - low + eps)


def noun_maps(maps: torch.Tensor, nouns, prompt_end: int, temperature: float = 0.5,
              eps: float = 1e-8) -> torch.Tensor:
    """[B, h, w, T] maps -> [B, h, w, K] spatial distributions of the K composite tokens (min-max, then sum 1).

    `eps` guards a spatially constant map, where the reference code divides by zero."""
    tokens = _minmax_noun_maps(maps, nouns, prompt_end, temperature, eps)
    return tokens / (tokens.sum(dim=(1, 2), keepdim=True) + eps)


def entropy_loss(maps: torch.Tensor, nouns, prompt_end: int, temperature: float = 0.5) -> torch.Tensor:
    """L_ent per sample: -2 * sum over composite tokens and pixels of q log(q + 1e-5). [B, h, w, T] -> [B]."""
    q = noun_maps(maps, nouns, prompt_end, temperature)
    return -2 * (q * torch.log(q + 1e-5)).sum(dim=(1, 2, 3))


def pose_loss(maps: torch.Tensor, nouns, prompt_end: int, temperature: float = 0.5) -> torch.Tensor:
    """The reference's optional layout prior for exactly two groups: pulls the first composite token's centroid to
    (10, 16) and the second's to (25, 16), as the reference writes it at any map size: the centroid's position as a
    fraction of the map, times 32 (its 32x32 grid). [B] per sample."""
    if len(nouns) != 2:
        raise ValueError("the pose prior needs exactly two groups")
    tokens = _minmax_noun_maps(maps, nouns, prompt_end, temperature, 1e-8)  # [B, h, w, 2]
    h, w = tokens.shape[1:3]
    ys = torch.linspace(0, 1, h, device=maps.device).view(1, h, 1, 1)
    xs = torch.linspace(0, 1, w, device=maps.device).view(1, 1, w, 1)
    mass = tokens.sum(dim=(1, 2))
    centroid = torch.stack(((xs * tokens).sum(dim=(1, 2)) / mass, (ys * tokens).sum(dim=(1, 2)) / mass), -1)
    targets = torch.tensor(POSE_TARGETS, device=maps.device, dtype=centroid.dtype)
    return (0.2 * (centroid * POSE_GRID - targets) ** 2).mean(-1).sum(-1)


def step_size(step: int, steps: int, scale_factor: float = 3.0, scale_range=(1.0, 0.0)) -> float:
    """eta_i = scale_factor * linspace(scale_range, steps)[i] (reference: 3 * linspace(1, 0, 50))."""
    if steps <= 1:
        return scale_factor * scale_range[0]
    return scale_factor * (scale_range[0] + (scale_range[1] - scale_range[0]) * step / (steps - 1))


def entropy_threshold(step: int, steps: int, groups: int, by_fraction: bool = False,
                      table=REFERENCE_THRESHOLDS) -> float:
    """The loss below which refinement stops: theta * K / 2 - 2. theta is the reference table's entry for step
    index `step`, as the reference reads it at any step count; `by_fraction`: the entry for the step at the same
    fraction of a 50-step schedule. The table covers steps 0..9; later steps use its last value."""
    index = int(step * REFERENCE_STEPS / max(steps, 1)) if by_fraction else step
    return table[min(index, len(table) - 1)] * groups / 2 - 2


def cross_attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*D] queries, [B, T, H*D] keys -> [B, N, T] softmax probabilities (fp32), averaged over heads."""
    b, n, inner = q.shape
    d = inner // heads
    qh = q.float().view(b, n, heads, d).transpose(1, 2)
    kh = k.float().view(b, -1, heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) * d ** -0.5, dim=-1).mean(1)


class GradThroughInference(TorchFunctionMode):
    """Inside this context, autograd can differentiate through tensors created under ``torch.inference_mode``
    (model weights loaded by ComfyUI's loaders). Each such tensor an operation receives is replaced by a zero-copy
    alias (DLPack) that is an ordinary tensor, so autograd may save it; nothing is copied or changed. Use it
    together with ``torch.inference_mode(False)`` and ``torch.enable_grad()``."""

    def __init__(self):
        super().__init__()
        self._aliases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _alias(self, t):
        if not isinstance(t, torch.Tensor) or not t.is_inference():
            return t
        hit = self._aliases.get(id(t))
        if hit is None or hit[0] is not t:
            try:
                alias = torch.from_dlpack(t.detach())
            except (RuntimeError, TypeError, BufferError):  # a dtype or layout DLPack cannot carry
                alias = t.clone()
            hit = self._aliases[id(t)] = (t, alias)
        return hit[1]

    def _convert(self, a):
        if type(a) in (list, tuple) and any(isinstance(x, torch.Tensor) for x in a):  # torch.cat([...]) etc.
            return type(a)(self._alias(x) for x in a)
        return self._alias(a)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args = tuple(self._convert(a) for a in args)
        kwargs = {k: self._convert(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Binding groups resolved against the prompt

ARTICLES = frozenset({"a", "an", "the"})


def _words_between(alignment: PromptAlignment, a: tuple[int, int], b: tuple[int, int]) -> int:
    """How many words of the prompt lie between two spans of it (in either order)."""
    (a0, a1), (b0, b1) = alignment.word_range(a), alignment.word_range(b)
    return max(b0 - a1, a0 - b1) - 1


def attribute_span(alignment: PromptAlignment, ref: PhraseRef, noun: tuple[int, int], nouns) -> tuple[int, int]:
    """The prompt span an attribute binds to. 'white#2' is that occurrence. A word that occurs once is that one.
    Else the occurrence with the fewest words between it and its noun, before the noun on a tie (attributes come
    before their noun in most prompts: 'a black and white cat sits in a white sink' binds the cat's white), never
    past another group's noun (`nouns`: every group's noun span); if none is that near, an error lists them."""
    if ref.explicit:
        return find_ref(alignment, ref).span
    found = alignment.find_spans(ref.phrase)
    if len(found) <= 1:
        return found[0] if found else find_ref(alignment, ref).span  # not in the prompt: that error
    low = max((n[1] for n in nouns if n[1] <= noun[0]), default=0)
    high = min((n[0] for n in nouns if n[0] >= noun[1]), default=len(alignment.prompt))
    near = [s for s in found if low <= s[0] and s[1] <= high and (s[1] <= noun[0] or s[0] >= noun[1])]
    if not near:
        choices = listed(f"{ref.phrase}#{i} ({quoted(_context(alignment, s))})" for i, s in enumerate(found, 1))
        raise SelectionError(f"{quoted(ref.phrase)} occurs {len(found)} times and none of them is next to its noun "
                             f"{quoted(alignment.prompt[noun[0]:noun[1]])} (before another group's noun): write one "
                             f"of {choices}")
    return min(near, key=lambda s: (_words_between(alignment, s, noun), s[0] > noun[0]))


def _context(alignment: PromptAlignment, span: tuple[int, int], words: int = 2) -> str:
    """The prompt around a span: up to `words` words either side."""
    before = alignment.prompt[:span[0]].split()[-words:]
    after = alignment.prompt[span[1]:].split()[:words]
    return " ".join([*before, alignment.prompt[span[0]:span[1]], *after])


def resolve_groups(alignment: PromptAlignment, key: str, specs) -> list[Group]:
    """Token rows (encoder `key`) of every group; each group's anchor phrase is the prompt text it spans, with a
    preceding article ('a cat wearing sunglasses'). Raises SelectionError for overlaps and PhraseNotFoundError."""
    nouns = [find_ref(alignment, spec.noun) for spec in specs]
    groups, owner = [], {}
    for index, (spec, noun) in enumerate(zip(specs, nouns, strict=True)):
        spans, attributes = [noun.span], []
        for ref in spec.attributes:
            span = attribute_span(alignment, ref, noun.span, [n.span for n in nouns])
            spans.append(span)
            attributes += alignment.encoders[key].positions_in(*span)
        noun_rows = alignment.encoders[key].positions_in(*noun.span)
        if not noun_rows:
            raise SelectionError(f"{quoted(spec.noun)} is not read by the {alignment.encoders[key].name} encoder")
        rows = noun_rows + [r for r in dict.fromkeys(attributes) if r not in noun_rows]
        if len(rows) == len(noun_rows):
            raise SelectionError(f"the attributes of {quoted(spec.noun)} are the noun itself")
        for r in rows:
            if r in owner:
                other, word = owner[r], alignment.encoders[key].tokens[r].word
                raise SelectionError(f"{quoted(spec.noun)} and {quoted(specs[other].noun)} share the word "
                                     f"{quoted(word)}; a word can belong to one group: name another occurrence with "
                                     f"'#n' ('{word}#2')")
            owner[r] = index
        start, end = min(s[0] for s in spans), max(s[1] for s in spans)
        before = alignment.prompt[:start].split()
        if before and before[-1].lower() in ARTICLES:
            start = alignment.prompt.rindex(before[-1], 0, start)
        groups.append(Group(tuple(noun_rows), tuple(rows[len(noun_rows):]), alignment.prompt[start:end],
                            alignment.prompt[noun.span[0]:noun.span[1]]))
    return groups


def clean_prompt(groups) -> str:
    """The prompt for end-token substitution when none is given: the groups' nouns with their articles, joined
    ('a cat and a dog'), which is what the reference configs write by hand."""
    nouns = [_noun_phrase(g) for g in groups]
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]


def _noun_phrase(group: Group) -> str:
    first = group.anchor.split()[0] if group.anchor else ""
    return f"{first} {group.noun_text}" if first.lower() in ARTICLES else group.noun_text
