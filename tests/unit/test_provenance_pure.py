"""Pure provenance code: the prompt tag, the entry rules and the row selection, against hand-written expectations."""

import copy

import pytest
import torch


@pytest.fixture(scope="module")
def prov(leakless):
    import leakless.nodes.text.provenance as prov

    return prov


class Encoder:  # stands for a CLIP's text encoder: only its type name enters the tag
    pass


class OtherEncoder:
    pass


class Clip:
    def __init__(self, model):
        self.cond_stage_model = model


COW = {"t5xxl": [[(71, 1.0), (9321, 1.0), (11, 1.0), (1, 1.0)] + [(0, 1.0)] * 252], "l": [[(49406, 1.0), (320, 1.0)]]}
DOG = {"t5xxl": [[(71, 1.0), (1782, 1.0), (11, 1.0), (1, 1.0)] + [(0, 1.0)] * 252], "l": [[(49406, 1.0), (321, 1.0)]]}


def tag(prov, tokens=COW, text="A cow", node="Leakless DeLeaker Encode", clip=None, rows=256):
    return prov.prompt_tag(node, clip or Clip(Encoder()), tokens, text, rows)


def test_tag_identifies_tokens_and_encoder_only(prov):
    a = tag(prov)
    assert a == tag(prov, tokens=copy.deepcopy(COW), text="A  cow", node="Leakless Token Trace")  # same tokens
    assert a == tag(prov, tokens=dict(reversed(list(COW.items()))))  # key order does not matter
    assert a == tag(prov, clip=Clip(Encoder()))  # another load of the same encoder type
    assert a != tag(prov, tokens=DOG)  # another prompt of the same padded length
    weighted = copy.deepcopy(COW)
    weighted["t5xxl"][0][1] = (9321, 1.2)
    assert a != tag(prov, tokens=weighted)
    assert a != tag(prov, clip=Clip(OtherEncoder()))
    assert len({a, tag(prov, text="other text")}) == 1  # hashable, text is not part of the identity
    assert str(a) == "'A cow' (encoded by Leakless DeLeaker Encode)"
    assert tag(prov, text="x" * 80).quoted == "'" + "x" * 59 + "\u2026' (80 characters)"


def test_tag_reads_embedding_tensors(prov):
    emb = {"l": [[(49406, 1.0), (torch.ones(4), 1.0)]]}
    same = {"l": [[(49406, 1.0), (torch.ones(4), 1.0)]]}
    other = {"l": [[(49406, 1.0), (torch.full((4,), 2.0), 1.0)]]}
    assert tag(prov, tokens=emb) == tag(prov, tokens=same) != tag(prov, tokens=other)


def test_tag_conditioning_copies_every_entry(prov):
    cond = [[torch.zeros(1, 256, 8), {"pooled_output": torch.ones(1, 4)}], [torch.ones(1, 256, 8), {}]]
    before = [dict(m) for _, m in cond]
    tagged, t = prov.tag_conditioning("N", Clip(Encoder()), COW, "A cow", cond)
    assert t == tag(prov) and t.rows == 256
    assert [prov.tag_of(m) for _, m in tagged] == [t, t]
    assert all(a[0] is b[0] for a, b in zip(tagged, cond, strict=True))  # tensors shared, never copied or changed
    assert [dict(m) for _, m in cond] == before and prov.tag_of(cond[0][1]) is None  # inputs untouched
    assert prov.tag_of({prov.KEY: "not a tag"}) is None


def check(prov, entries, every_entry=False):
    return prov.check_entries("Leakless DeLeaker", "entities", tag(prov), entries, "Leakless DeLeaker Encode",
                              "connect it.", every_entry)


def test_check_entries_rules(prov):
    ours, other = tag(prov), tag(prov, tokens=DOG, text="A dog", node="Leakless Token Trace")
    assert check(prov, [(ours, 256)]) == [0]
    assert check(prov, [(None, 256), (ours, 256), (other, 256)]) == [1]  # only its own entries
    with pytest.raises(ValueError, match=r"^Leakless DeLeaker: input 'entities': the positive prompt the sampler "
                       r"sees is not the one from Leakless DeLeaker Encode \('A cow'\): it is 'A dog' \(encoded by "
                       r"Leakless Token Trace\)\. Fix: connect it\.$"):
        check(prov, [(other, 256)])
    with pytest.raises(ValueError, match=r"it is 2 entries: a conditioning without a Leakless prompt tag "
                       r"\(CLIPTextEncode's or another node's\); 'A dog'"):
        check(prov, [(None, 256), (other, 256)])
    with pytest.raises(ValueError, match=r"it is 2 entries: 'A cow' .*; a conditioning without .* Every entry "
                       "must be, since all of them are edited"):
        check(prov, [(ours, 256), (None, 256)], every_entry=True)
    assert check(prov, [(ours, 256), (ours, 256)], every_entry=True) == [0, 1]
    with pytest.raises(ValueError, match=r"'A cow' \(encoded by .*\) has 300 token rows instead of the 256 .*"
                       "ConditioningConcat"):
        check(prov, [(ours, 300)])
    with pytest.raises(ValueError, match="the positive prompt the sampler sees is empty"):
        check(prov, [])


def test_same_encoding(prov):
    g = torch.Generator().manual_seed(0)
    fresh = torch.randn(1, 77, 16, generator=g) * 20
    assert prov.same_encoding(fresh.clone(), fresh)
    assert prov.same_encoding(fresh.repeat(3, 1, 1), fresh)  # a batch of the same prompt
    scale = float(fresh.abs().max())
    assert prov.same_encoding(fresh + 0.5e-4 * scale, fresh)  # rounding: within 1e-4 of the largest value
    assert not prov.same_encoding(fresh + 2e-4 * scale, fresh)
    assert not prov.same_encoding(torch.randn(1, 77, 16, generator=g) * 20, fresh)
    assert not prov.same_encoding(fresh[:, :70], fresh)
    mixed = fresh.repeat(2, 1, 1)
    mixed[1, 5] += 1.0
    assert not prov.same_encoding(mixed, fresh)


def test_check_conditioning(prov):
    t = tag(prov)
    fresh = [[torch.arange(256 * 4.0).view(1, 256, 4), {}]]
    calls = []

    def encode():
        calls.append(1)
        return fresh

    def run(conditioning):
        prov.check_conditioning("Leakless Leak Patch", "conditioning", t, conditioning, encode, "connect it.")

    run([[torch.zeros(1, 256, 4), {prov.KEY: t}]])  # tagged: the rows are not compared
    assert not calls
    run([[fresh[0][0].clone(), {}], [fresh[0][0].clone(), {"guidance": 2.0}]])  # untagged, same rows
    assert len(calls) == 1  # encoded once for every entry
    with pytest.raises(ValueError, match=r"^Leakless Leak Patch: input 'conditioning': it is not this text's "
                       r"encoding: its rows differ from the encoding of 'A cow' with this CLIP\. Fix: connect it\.$"):
        run([[fresh[0][0] + 1, {}]])
    other = tag(prov, tokens=DOG, text="A dog")
    with pytest.raises(ValueError, match=r"entry 2 of 2 is not this text's encoding: it was encoded from 'A dog' "
                       r"\(encoded by Leakless DeLeaker Encode\), not from 'A cow'"):
        run([[fresh[0][0], {prov.KEY: t}], [fresh[0][0], {prov.KEY: other}]])
