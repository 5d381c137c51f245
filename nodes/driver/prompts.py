"""ComfyUI glue of the Follow the Flow nodes: a prompt encoded with its empty prompt's rows beside it (the edits'
material), an item encoded alone (leak patching), and the redundancy classifiers' model folder."""

from __future__ import annotations

import os

import torch

from ..errors import LeaklessInputError, input_error
from ..methods import flow, redundancy
from ..methods.flow import EMPTY_PROMPT_MODES
from ..text import grammar, provenance
from ..text.alignment import ROWS
from .clip import EMPTY_PROMPT, align_clip, family_of, masked_clip

MODEL_FOLDER = "leakless"  # models/leakless/: redundancy classifiers
TRAIN_HINT = "python -m leakless.nodes.redundancy_cli"
ENCODED_DIFFERENTLY = ("this ComfyUI encodes the family differently from the ones Leakless is tested on: report it "
                       "with the prompt.")


class EncodedPrompt:
    """A prompt's alignment, its conditioning (encode()), and the empty prompt's conditioning at the same length."""

    def __init__(self, node: str, clip, text: str, empty_prompt: str = EMPTY_PROMPT_MODES[0]):
        self.alignment = align_clip(node, clip, text)
        self.masked = empty_prompt == EMPTY_PROMPT_MODES[1]  # attention-masked
        if self.masked and masked_clip(clip) is None:
            raise LeaklessInputError(node, "empty_prompt", "this CLIP's text encoders have no attention-mask switch.",
                                     "set it to 'as encoded'.")
        self.family = family_of(node, self.alignment)
        self.node = node
        # conditioning key: tokens of every extra row set (HiDream's Llama layers); they follow each edit
        self.extra = {k: self.alignment.encoders[e] for k, e in self.family.extra_rows}
        self.key = ROWS
        self.encoder = self.alignment.rows
        self._clip, self._text = clip, text

    def encode(self, conditioning=None) -> EncodedPrompt:
        """The prompt's CONDITIONING (`self.conds`): encoded here, or `conditioning`, checked to be its encoding."""
        node, clip, text, tokens = self.node, self._clip, self._text, self.alignment.tokens
        if conditioning is None:  # tagged like every Leakless encoding: the tag is kept through its edits
            self.conds, _ = provenance.tag_conditioning(node, clip, tokens, text,
                                                        clip.encode_from_tokens_scheduled(tokens))
            if self.conds[0][0].shape[1] != self.encoder.length:
                raise LeaklessInputError(
                    node, "clip", f"ComfyUI encoded the prompt to {self.conds[0][0].shape[1]} rows where Leakless "
                    f"counts {self.encoder.length} {self.family.name} rows, so positions would be wrong.",
                    ENCODED_DIFFERENTLY)
        else:
            fix = ("connect this text's conditioning from this CLIP (CLIPTextEncode or a Leakless node), or leave "
                   "it unconnected.")
            for cond, _ in conditioning:
                if cond.shape[1] != self.encoder.length:
                    raise LeaklessInputError(
                        node, "conditioning", f"it has {cond.shape[1]} token rows but the text encodes to "
                        f"{self.encoder.length} {self.encoder.name} rows, so it is not this text's encoding.", fix)
            tag = provenance.prompt_tag(node, clip, tokens, text, self.encoder.length)
            provenance.check_conditioning(node, "conditioning", tag, conditioning,
                                          lambda: clip.encode_from_tokens_scheduled(tokens), fix)
            for _, meta in conditioning:
                self.extra_rows(meta, "conditioning", "it", fix)
            self.conds = conditioning
        return self

    def extra_rows(self, meta: dict, input_name: str, what: str, fix: str = "") -> dict:
        """`meta`'s extra token rows (HiDream's Llama rows), each checked to have one row per token of its encoder."""
        out = {}
        for key, tokens in self.extra.items():
            rows = meta.get(key)
            if rows is None or rows.shape[-2] != tokens.length:
                found = "none" if rows is None else f"{rows.shape[-2]} token rows"
                raise LeaklessInputError(self.node, input_name, f"{what} has {found} in '{key}' where the text has "
                                         f"{tokens.length} {tokens.name} tokens, so those rows cannot follow the "
                                         "edit.", fix or ENCODED_DIFFERENTLY)
            out[key] = rows
        return out

    @property
    def empties(self):
        """The empty prompt's CONDITIONING at the prompt's token layout, one entry per prompt entry (cached)."""
        empties = EMPTY_PROMPT.get(self._clip, self.alignment.tokens, self.encoder.length, self.masked)
        return empties if len(empties) == len(self.conds) else [empties[0]] * len(self.conds)

    def pooled(self, mode: str, own: dict, empty: dict, replaced_any: bool):
        use_empty = mode == "empty prompt" or (mode == "reference" and self.family.empty_pooled_when_replaced
                                               and replaced_any)
        return (empty if use_empty else own).get("pooled_output")

    def conditioning(self, variants, pooled_mode: str, on_variant=None):
        """Batch one edited conditioning per variant (the rows it replaces with the empty prompt's; the extra rows
        follow, see flow.following_rows), for every entry of the prompt's CONDITIONING; every other key of an entry
        (guidance, hooks, masks...) is kept. ``on_variant()`` is called after each variant of each entry."""
        followed = {k: [flow.following_rows(self.encoder, tokens, replaced) for replaced in variants]
                    for k, tokens in self.extra.items()}
        out = []
        for (cond, own), (empty_cond, empty) in zip(self.conds, self.empties, strict=True):
            meta = dict(own)
            pooled = [self.pooled(pooled_mode, own, empty, bool(replaced)) for replaced in variants]
            if pooled[0] is not None:
                meta["pooled_output"] = torch.cat(pooled)
            rows, empty_rows = self.extra_rows(own, "clip", "the prompt's encoding"), self.extra_rows(
                empty, "clip", "the empty prompt's encoding")
            for key, positions in followed.items():
                meta[key] = flow.replace_rows_batch(rows[key], empty_rows[key], positions)
            out.append([flow.replace_rows_batch(cond, empty_cond, variants, on_variant), meta])
        return out

    def batch_bytes(self, variants: int) -> int:
        """The memory of `variants` edited copies of the prompt's CONDITIONING (its rows, extra rows, pooled)."""
        tensors = [t for cond, meta in self.conds for t in (cond, meta.get("pooled_output"),
                                                           *(meta.get(k) for k in self.extra)) if torch.is_tensor(t)]
        return variants * sum(t.numel() * t.element_size() for t in tensors)


def encode_alone(node, clip, a, encoders: dict, ref):
    """Encode an item alone (through the same template, if any) with the weights it has in the prompt; return it
    and, for each place its rows go (`encoders`: ROWS or a conditioning key -> the alignment's encoder key), its
    rows there and where they go. Byte-level BPE encoders (the LLMs) spell a word after a space differently
    ('Ġcat'), so an item that follows whitespace in the prompt is encoded with one space before it when that is
    what gives the prompt's tokens."""
    match = grammar.find_ref(a, ref)
    targets = {w: match.of(k) for w, k in encoders.items()}
    spaced = match.span[0] > 0 and a.prompt[match.span[0] - 1].isspace()
    for text in (ref.phrase, " " + ref.phrase) if spaced else (ref.phrase,):
        alone = align_clip(node, clip, text)
        sources = {w: [t.position for t in alone.encoder(k).tokens if not t.is_special] for w, k in encoders.items()}
        differing = [w for w, k in encoders.items() if [alone.encoder(k).at(p).token_id for p in sources[w]]
                     != [a.encoder(k).at(p).token_id for p in targets[w]]]
        if not differing:
            break
    else:
        where = differing[0]
        key = encoders[where]
        texts = [a.encoder(key).at(p).text for p in targets[where]]
        raise grammar.SelectionError(
            f"'{ref}' is tokenized differently alone {[alone.encoder(key).at(p).text for p in sources[where]]} than "
            f"in the prompt {texts} ({a.encoder(key).name}), so its rows cannot be matched; name the item with the "
            "characters around it as they stand in the prompt")
    tokens = dict(alone.tokens)
    for k, enc_tokens in a.encoders.items():
        if k not in tokens or k not in alone.encoders:
            continue
        prompt_pos = match.positions[k]
        alone_enc = alone.encoders[k]
        alone_pos = [t.position for t in alone_enc.tokens if not t.is_special]
        weights = {q - alone_enc.offset: enc_tokens.at(p).weight for p, q in zip(prompt_pos, alone_pos, strict=False)}
        tokens[k] = reweighted(tokens[k], weights)
    return ref, clip.encode_from_tokens_scheduled(tokens), {w: (sources[w], targets[w]) for w in encoders}


def reweighted(chunks, weights: dict[int, float]):
    """`chunks` with the weights of the tokens at `weights`' indices (counted over the chunks) replaced."""
    out, position = [], 0
    for chunk in chunks:
        row = []
        for entry in chunk:
            w = weights.get(position)
            row.append((entry[0], w, *entry[2:]) if w is not None else tuple(entry))
            position += 1
        out.append(row)
    return out


def register_model_folder() -> None:
    """models/leakless/ holds redundancy classifiers (registered through folder_paths, ComfyUI's API for it)."""
    import folder_paths

    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def classifier_files() -> list[str]:
    import folder_paths

    try:
        files = folder_paths.get_filename_list(MODEL_FOLDER)
    except KeyError:
        files = []
    return ["none"] + [f for f in files if f.endswith(".safetensors")]


def load_classifier(node: str, name: str):
    import folder_paths

    try:
        return redundancy.load(folder_paths.get_full_path_or_raise(MODEL_FOLDER, name))
    except (redundancy.RedundancyError, OSError, FileNotFoundError) as e:
        raise input_error(node, "classifier", e, f"select a file written by '{TRAIN_HINT}'.") from None
