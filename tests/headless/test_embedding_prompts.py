"""Prompts with ``embedding:`` on a CLIP from the standard loader (it looks embeddings up in models/embeddings,
which has none: ComfyUI reads the leftover text). Rows must be where the running ComfyUI encodes the words; 0.3.75
and 0.33.0 split such prompts differently (issue 12)."""

import pytest
import torch

PROMPT = "a photo of embedding:style<x> cow and a horse"


@pytest.fixture(scope="module")
def flux_clip(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    return nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]


def t5_rows(clip, text, word):
    """Independent of Leakless: the T5 rows of ComfyUI's own tokenization that hold `word`'s vocabulary ids."""
    t5 = clip.tokenizer.t5xxl
    ids = set(t5.tokenizer(word)["input_ids"]) - {t5.end_token}
    return [p for p, (tok, _w) in enumerate(clip.tokenize(text)["t5xxl"][0]) if tok in ids]


@pytest.mark.parametrize("text", [PROMPT, "embedding:style[x] cow and\ta horse", "a\tembedding:style cow, a horse"])
def test_leak_patch_after_an_embedding_pastes_the_right_rows(flux_clip, comfy_nodes, text):
    nodes, _ = comfy_nodes
    base = nodes.CLIPTextEncode().encode(flux_clip, text)[0]
    (cond, _meta), = nodes.NODE_CLASS_MAPPINGS["LeaklessLeakPatch"].execute(
        clip=flux_clip, text=text, items="cow\nhorse", conditioning=base).args[0]
    cow, horse = t5_rows(flux_clip, text, "cow"), t5_rows(flux_clip, text, "horse")
    assert len(cow) == 1 and len(horse) == 1 and cow != horse
    for rows, word in ((cow, "cow"), (horse, "horse")):
        isolated = nodes.CLIPTextEncode().encode(flux_clip, word)[0][0][0]
        assert torch.equal(cond[:, rows], isolated[:, :1])
    others = [i for i in range(cond.shape[1]) if i not in cow + horse]
    assert torch.equal(cond[:, others], base[0][0][:, others])


@pytest.mark.parametrize("text", ["a (cat:1)embedding:style cow", "a cat embedding:style, a cow",
                                  "a cat(embedding:style:1.1) cow"])
def test_the_word_before_an_embedding_can_be_named(flux_clip, comfy_nodes, text):
    """'cat' right before 'embedding:style' is a word of its own (it was glued: 'catembedding:style'): Leak Patch
    pastes its rows, and the Token Inspector shows 'cat' as its word."""
    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    base = nodes.CLIPTextEncode().encode(flux_clip, text)[0]
    (cond, _meta), = m["LeaklessLeakPatch"].execute(clip=flux_clip, text=text, items="cat",
                                                    conditioning=base).args[0]
    cat = t5_rows(flux_clip, text, "cat")
    assert len(cat) == 1
    assert torch.equal(cond[:, cat], nodes.CLIPTextEncode().encode(flux_clip, "cat")[0][0][0][:, :1])
    table = m["LeaklessTokenInspector"].execute(clip=flux_clip, text=text).args[0]
    words = {line.split()[2]: line.split()[3:] for line in table.splitlines()[1:] if len(line.split()) > 3}
    assert words["\u2581cat"][0] == "cat" and "catembedding" not in table
