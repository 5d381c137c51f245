"""The prompt<->token alignment module, on the real ComfyUI tokenizers (CLIP-L, CLIP-G, T5-XXL) and tests/data."""

import json
import re
from pathlib import Path

import pytest

PROMPTS = json.loads((Path(__file__).resolve().parents[1] / "data" / "prompts.json").read_text())
FAMILIES = ("sd15", "sdxl", "flux")


@pytest.fixture(scope="module")
def alignment(leakless):
    return leakless.nodes.text.alignment


def flat(chunks):
    return [t for chunk in chunks for t in chunk]


def normalized_token(enc_key, text):
    if enc_key == "t5xxl":
        return text.replace("\u2581", "")
    return text.replace("</w>", "")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", PROMPTS, ids=[f"p{i}" for i in range(len(PROMPTS))])
def test_tokens_follow_comfyui_layout(alignment, tokenizers, family, prompt):
    tok = tokenizers[family]
    a = alignment.align(prompt, tok)
    reference = tok.tokenize_with_weights(prompt, return_word_ids=True)
    assert set(a.encoders) == set(reference)
    for key, chunks in reference.items():
        enc = a.encoders[key]
        ref = flat(chunks)
        assert [t.position for t in enc.tokens] == list(range(len(ref)))
        assert [(t.token_id, t.weight, t.segment) for t in enc.tokens] == [(i, w, s) for i, w, s in ref]
        assert enc.exact
        if key in ("l", "g"):
            assert all(n == 77 for n in enc.chunk_lengths)
            for c in range(len(enc.chunk_lengths)):
                chunk = enc.tokens[77 * c: 77 * (c + 1)]
                assert chunk[0].kind == "bos" and chunk[0].token_id == 49406
                assert [t.kind for t in chunk].count("eos") == 1
                pad_id = 49407 if key == "l" else 0
                assert all(t.token_id == pad_id for t in chunk if t.kind == "pad")
        else:
            assert len(enc.tokens) >= 256 and len(enc.chunk_lengths) == 1
            assert enc.tokens[0].kind != "bos"
            assert [t.kind for t in enc.tokens].count("eos") == 1
            assert all(t.token_id == 0 for t in enc.tokens if t.kind == "pad")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", PROMPTS, ids=[f"p{i}" for i in range(len(PROMPTS))])
def test_spans_spell_their_tokens(alignment, tokenizers, family, prompt):
    assert_spans_spell_tokens(alignment.align(prompt, tokenizers[family]))


def assert_spans_spell_tokens(a, names_dropped=False):
    """Independent check: each token's vocabulary spelling is the prompt text under its span (ASCII spans).
    `names_dropped`: ComfyUI may read no token of an ``embedding:name`` (it drops names it cannot find)."""
    prompt = a.prompt
    dropped = {i for m in re.finditer(r"embedding:\S*", prompt) for i in range(*m.span())} if names_dropped else ()
    for key, enc in a.encoders.items():
        covered = set()
        for t in enc.tokens:
            if t.is_special:
                assert t.span is None and t.word == ""
                continue
            assert t.span is not None and t.word, (key, t)
            covered.update(range(*t.span))
            source = prompt[t.span[0]:t.span[1]]
            if t.kind == "embedding":
                assert re.fullmatch(r"embedding:\S+", source), (key, t)
                continue
            spelled = normalized_token(key, t.text)
            if source.isascii() and spelled.isascii() and spelled not in ("", "<unk>"):
                if key == "t5xxl":
                    assert spelled == source, (key, t)
                else:
                    assert spelled == source.lower(), (key, t)
        # Every character the tokenizer reads is carried by some token (weight syntax and spaces excepted).
        for i, ch in zip(a.plain_to_prompt, a.plain, strict=True):
            if not ch.isspace() and i not in dropped:
                assert i in covered, (key, repr(ch), i)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", PROMPTS, ids=[f"p{i}" for i in range(len(PROMPTS))])
def test_every_word_is_found(alignment, tokenizers, family, prompt):
    a = alignment.align(prompt, tokenizers[family])
    for word in {w.strip(".,;:!?'\"") for w in a.words()}:
        if not re.fullmatch(r"\w+", word):
            continue
        for n in range(1, len(a.find_spans(word)) + 1):
            match = a.find(word, n)
            for key, positions in match.positions.items():
                assert positions, (key, word)
                for p in positions:
                    s, e = a.encoders[key].tokens[p].span
                    assert s < match.span[1] and e > match.span[0]


def test_phrase_across_weight_syntax(alignment, tokenizers):
    a = alignment.align("a photo of a (red cat:1.2) sitting", tokenizers["sdxl"])
    m = a.find("red cat")
    assert m.positions == {"g": [5, 6], "l": [5, 6]}
    assert [a.encoders["l"].tokens[p].weight for p in m.positions["l"]] == [1.2, 1.2]
    assert [a.encoders["l"].tokens[p].word for p in m.positions["l"]] == ["red", "cat"]


def test_phrase_case_whitespace_and_word_boundaries(alignment, tokenizers):
    a = alignment.align("The Cat and the  cat and THE CAT, cats", tokenizers["flux"])
    assert len(a.find_spans("the cat")) == 3
    assert len(a.find_spans("cat")) == 3  # "cats" is another word
    third = a.find("cat", 3)
    assert [a.encoders["t5xxl"].tokens[p].text for p in third.positions["t5xxl"]] == ["\u2581", "CAT"]
    assert a.find("cats").positions["l"] == [10]


def test_nth_occurrence_and_missing_phrase_errors(alignment, tokenizers):
    a = alignment.align("cat cat cat dog cat", tokenizers["sdxl"])
    assert a.find("cat", 4).positions["l"] == [5]
    with pytest.raises(alignment.PhraseNotFoundError, match=r"'cat' occurs 4 time\(s\), not 5"):
        a.find("cat", 5)
    with pytest.raises(alignment.PhraseNotFoundError) as e:
        a.find("horse")
    assert "'horse' is not in the prompt" in str(e.value) and "'dog'" in str(e.value)
    with pytest.raises(alignment.PhraseNotFoundError, match="empty phrase"):
        a.find("   ")


def test_sentencepiece_splits_and_multi_token_items(alignment, tokenizers):
    a = alignment.align("bats flying at night, a baseball bat", tokenizers["flux"])
    t5 = a.encoders["t5xxl"]
    assert [t5.tokens[p].text for p in a.find("bats").positions["t5xxl"]] == ["\u2581bat", "s"]
    assert [t5.tokens[p].text for p in a.find("a").positions["t5xxl"]] == ["\u2581", "a"]
    assert a.find("bat").positions["l"] == [8]


def test_multi_chunk_positions(alignment, tokenizers):
    words = " ".join(f"word{i}" for i in range(60))
    a = alignment.align(words + " " + words + " (final cat:1.2)", tokenizers["sdxl"])
    l_tokens = a.encoders["l"]
    assert l_tokens.length % 77 == 0 and l_tokens.length >= 154
    cat = a.find("final cat").positions["l"]
    assert all(l_tokens.tokens[p].chunk >= 1 for p in cat)
    assert a.find("final cat").positions["l"] == a.find("final cat").positions["g"]
    assert l_tokens.tokens[cat[0] - 1].word.startswith("word59")


def test_t5_is_never_truncated(alignment, tokenizers):
    prompt = "a cat " * 200
    a = alignment.align(prompt, tokenizers["flux"])
    assert len(a.find_spans("cat")) == 200
    last = a.find("cat", 200).positions["t5xxl"]
    assert last and last[0] > 256


def test_disable_weights_reads_parentheses_literally(alignment, tokenizers):
    a = alignment.align("a (cat:1.2)", tokenizers["sd15"], disable_weights=True)
    assert "(" in a.plain and ":1.2" in a.plain
    assert all(t.weight == 1.0 for t in a.encoders["l"].tokens)


def test_embeddings(alignment, comfy, tmp_path):
    import comfy.sd1_clip
    import safetensors.torch
    import torch

    safetensors.torch.save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "my_embedding.safetensors"))
    tok = comfy.sd1_clip.SD1Tokenizer(embedding_directory=str(tmp_path))
    a = alignment.align("a photo of embedding:my_embedding a cat", tok)
    l_tokens = a.encoders["l"].tokens
    emb = [t for t in l_tokens if t.kind == "embedding"]
    assert len(emb) == 2 and all(t.span == (11, 33) and t.token_id is None for t in emb)
    assert [l_tokens[p].text for p in a.find("cat").positions["l"]] == ["cat</w>"]
    # A missing embedding is dropped by ComfyUI; the words after it keep their places.
    b = alignment.align("a photo of embedding:missing_embed, a dog", tok)
    assert [b.encoders["l"].tokens[p].text for p in b.find("dog").positions["l"]] == ["dog</w>"]
    assert all(t.kind in ("bos", "eos", "pad", "text") for t in b.encoders["l"].tokens)
    assert [b.encoders["l"].tokens[p].text for p in b.find("a", 2).positions["l"]] == ["a</w>"]
    with pytest.raises(alignment.PhraseNotFoundError, match="no text encoder reads it"):
        b.find("missing_embed")
    # Commas stuck to a name go back to the text, as ComfyUI does it; a found embedding keeps its span.
    c = alignment.align("embedding:my_embedding, a cat", tok)
    assert [t.span for t in c.encoders["l"].tokens if t.kind == "embedding"] == [(0, 22), (0, 22)]
    assert [c.encoders["l"].tokens[p].text for p in c.find("cat").positions["l"]] == ["cat</w>"]
    comma = [t for t in c.encoders["l"].tokens if t.text == ",</w>"]
    assert len(comma) == 1 and comma[0].span == (22, 23)


# ComfyUI 0.33.0 splits "embedding:" after any whitespace and ends a name at "<" or "["; 0.3.75 splits after " " or
# "\n" only. Positions must be what the running ComfyUI encodes, whichever version this process imported.
EMBEDDING_PROMPTS = [
    "embedding:style<x> cow",
    "embedding:style[x] cow",
    "a photo of\tembedding:style cow",
    "a photo of\nembedding:style cow",
    "embedding:style cow",
    "\nembedding:style cow",
    "a photo of embedding:style<x> cow and a horse",
    "a photo of \t embedding:style, a\tcow",
    "a (photo of\tembedding:style[x]:1.2) cow\n",
]


def comfy_pieces(segment, version):
    """What ComfyUI tokenizes for one segment, written from comfy/sd1_clip.py of each version: ("embedding", name)
    for an embedding reference (the name it looks up first), else the text it hands to the tokenizer."""
    if version == "0.33.0":
        split = re.split(r"(?<=\s)embedding:", segment)
    else:
        split = re.split(" embedding:|\nembedding:", segment)
    out = []
    for word in [w for w in [split[0]] + ["embedding:" + s for s in split[1:]] if w]:
        if word.startswith("embedding:"):
            name, *rest = word[len("embedding:"):].split()
            leftover = " ".join(rest)
            cut = re.search(r"[<\[]", name) if version == "0.33.0" else None
            if cut:
                name, leftover = name[:cut.start()], name[cut.start():] + (" " + leftover if leftover else "")
            out.append(("embedding", name))
            stripped = name.strip(",")
            if len(stripped) < len(name):
                leftover = f"{name[len(stripped):]} {leftover}"
            if not leftover:
                continue
            word = leftover
        out.append(word)
    return out


@pytest.mark.parametrize("version", ["0.3.75", "0.33.0"])
def test_embedding_rules_of_both_versions(alignment, version):
    """Pure check against the reference above: the module knows the rules of both ComfyUI versions."""
    segments = [p for p in EMBEDDING_PROMPTS if "(" not in p] + [
        "a embedding:x embedding:y,, b", "embedding:a,[b] c", "embedding:x,", "x\u3000embedding:y\x0bz"]

    def pieces(rules, segment):
        out = []
        for piece in alignment._split_embeddings(alignment._Piece(segment, list(range(len(segment)))), rules):
            assert [segment[i] for i in piece.index] == list(piece.text)
            if piece.text.startswith("embedding:"):
                end, rest = alignment._embedding_leftover(piece, rules)
                assert all(segment[i] == ch for ch, i in zip(rest.text, rest.index, strict=True) if i >= 0)
                name = segment[piece.index[0] + len("embedding:"):end].lstrip()
                out.append(("embedding", name))
                out += [rest.text] if rest.text else []
            else:
                out.append(piece.text)
        return out

    # The name the module spans is the one without trailing commas; the reference gives the one ComfyUI tries first.
    expected = [[p if isinstance(p, str) else ("embedding", p[1].rstrip(",")) for p in comfy_pieces(seg, version)]
                for seg in segments]
    assert any([pieces(rules, seg) for seg in segments] == expected for rules in alignment._RULES)


@pytest.fixture(scope="module")
def embedding_tokenizers(comfy, tmp_path_factory):
    """Family tokenizers that look embeddings up in a folder without `style` (the common case: ComfyUI then reads
    the leftover text), in one with a real `style` embedding (2 rows per encoder), or nowhere."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.flux
    import safetensors.torch
    import torch

    missing, found = tmp_path_factory.mktemp("no_embeddings"), tmp_path_factory.mktemp("embeddings")
    rows = {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280), "t5xxl": torch.randn(2, 4096)}
    safetensors.torch.save_file(rows, str(found / "style.safetensors"))
    classes = {"sd15": comfy.sd1_clip.SD1Tokenizer, "sdxl": comfy.sdxl_clip.SDXLTokenizer,
               "flux": comfy.text_encoders.flux.FluxTokenizer}
    return {(family, where): cls(embedding_directory=folder) for family, cls in classes.items()
            for where, folder in (("missing", str(missing)), ("found", str(found)), ("none", None))}


def reference_positions(family_tokenizer, reference, key, word):
    """Independent of the module: where ComfyUI's own output holds the vocabulary ids of `word` (once in the prompt)."""
    sub = getattr(family_tokenizer, {"l": "clip_l", "g": "clip_g"}.get(key, key))
    ids = set(sub.tokenizer(word)["input_ids"]) - {sub.start_token, sub.end_token}
    return [p for p, (tok, _w, _wid) in enumerate(flat(reference[key])) if isinstance(tok, int) and tok in ids]


@pytest.mark.parametrize("where", ["missing", "found", "none"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", EMBEDDING_PROMPTS, ids=[f"e{i}" for i in range(len(EMBEDDING_PROMPTS))])
def test_embedding_positions_follow_running_comfyui(alignment, embedding_tokenizers, family, where, prompt):
    tok = embedding_tokenizers[family, where]
    a = alignment.align(prompt, tok)
    reference = tok.tokenize_with_weights(prompt, return_word_ids=True)
    for key, chunks in reference.items():
        enc = a.encoders[key]
        assert [(t.token_id, t.weight, t.segment) for t in enc.tokens] == [
            (i if isinstance(i, int) else None, w, s) for i, w, s in flat(chunks)]
        assert enc.exact, key
        for t in enc.tokens:
            if t.kind == "embedding":
                assert where == "found" and prompt[t.span[0]:t.span[1]] == "embedding:style"
        for word in ("cow", "horse", "photo"):
            if re.search(rf"\b{word}\b", prompt):
                positions = a.find(word).positions[key]
                assert positions and positions == reference_positions(tok, reference, key, word), (key, word)
    assert_spans_spell_tokens(a, names_dropped=where != "none")


@pytest.mark.parametrize("where", ["missing", "found"])
def test_deleaker_entities_after_embedding_get_distinct_positions(alignment, embedding_tokenizers, where):
    """Issue 12: on 0.33.0 "style<x>" ends the name at "<"; 'cow' and 'horse' must keep distinct, correct rows."""
    tok = embedding_tokenizers["flux", where]
    prompt = "a photo of embedding:style<x> cow and a horse"
    a = alignment.align(prompt, tok)
    reference = tok.tokenize_with_weights(prompt, return_word_ids=True)
    cow, horse = a.find("cow").positions["t5xxl"], a.find("horse").positions["t5xxl"]
    assert cow and horse and not set(cow) & set(horse)
    assert cow == reference_positions(tok, reference, "t5xxl", "cow")
    assert horse == reference_positions(tok, reference, "t5xxl", "horse")
    assert a.find("photo of").positions["t5xxl"] == reference_positions(tok, reference, "t5xxl", "photo") + \
        reference_positions(tok, reference, "t5xxl", "of")


def test_unsupported_tokenizer(alignment):
    class OtherTokenizer:
        def tokenize_with_weights(self, text, return_word_ids=False, **kw):
            return {"qwen25_7b": [[(1, 1.0, 1)]]}

    with pytest.raises(alignment.UnsupportedTokenizerError, match="qwen25_7b.*supported families: .*SD1.5"):
        alignment.align("a cat", OtherTokenizer())


def test_input_is_not_mutated_and_alignment_is_deterministic(alignment, tokenizers):
    prompt = "a (red cat:1.2)"
    first = alignment.align(prompt, tokenizers["flux"])
    second = alignment.align(prompt, tokenizers["flux"])
    assert prompt == "a (red cat:1.2)"
    assert first.encoders == second.encoders


class _NoOffsets:
    """A real HF tokenizer that refuses offsets, as transformers 4.x's slow CLIPTokenizer does."""

    def __init__(self, hf):
        self.hf = hf

    def __call__(self, text, return_offsets_mapping=False, **kw):
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return self.hf(text, **kw)


def test_tokenizer_without_offsets_falls_back_to_word_spans(alignment, tokenizers):
    import copy

    family = copy.copy(tokenizers["flux"])
    family.clip_l = copy.copy(family.clip_l)
    family.clip_l.tokenizer = _NoOffsets(family.clip_l.tokenizer)
    family.t5xxl = copy.copy(family.t5xxl)
    family.t5xxl.tokenizer = _NoOffsets(family.t5xxl.tokenizer)
    prompt = "a (supercalifragilistic cat:1.2) bats, ok"
    a = alignment.align(prompt, family)
    reference = alignment.align(prompt, tokenizers["flux"])
    for key in ("l", "t5xxl"):
        assert not a.encoders[key].exact
        assert a.find("cat").positions[key] == reference.find("cat").positions[key]
        long_word = a.find("supercalifragilistic").positions[key]
        assert long_word == reference.find("supercalifragilistic").positions[key] and len(long_word) > 1
    # "bats," is one whitespace word: without offsets its comma travels with it.
    bats = reference.find("bats").positions["l"]
    assert len(bats) == 1 and a.find("bats").positions["l"] == [bats[0], bats[0] + 1]


@pytest.mark.parametrize("prompt", [
    "a cat embedding:my_embedding", "a cat embedding:missing", "a cat embedding:my_embedding, dog",
    "a (cat)embedding:my_embedding", "(cat:1.2)embedding:missing dog", "a cat(embedding:my_embedding)",
    "a cat\nembedding:missing dog", "a (cat)(embedding:missing:1.1) dog",
])
def test_a_word_before_an_embedding_stays_whole(alignment, comfy, tmp_path, prompt):
    """'cat' next to 'embedding:name' (found or missing, after a space or another segment) is the word 'cat', on
    the running ComfyUI's rules: never glued to the embedding ('catembedding:...'), in words, tokens and payload."""
    import comfy.sd1_clip
    import comfy.text_encoders.flux
    import safetensors.torch
    import torch

    safetensors.torch.save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "my_embedding.safetensors"))
    for tok in (comfy.sd1_clip.SD1Tokenizer(embedding_directory=str(tmp_path)),
                comfy.text_encoders.flux.FluxTokenizer(embedding_directory=str(tmp_path))):
        a = alignment.align(prompt, tok)
        assert "cat" in a.words() and not any("catembedding" in w for w in a.words()), a.words()
        cat = a.find("cat")
        for key, positions in cat.positions.items():
            tokens = [a.encoders[key].tokens[p] for p in positions]
            assert [normalized_token(key, t.text) for t in tokens] == ["cat"] and tokens[0].word == "cat"
        assert all(t.word.startswith("embedding:") for e in a.encoders.values() for t in e.tokens
                   if t.kind == "embedding")
        assert "catembedding" not in json.dumps(a.payload())
        if "dog" in prompt:
            assert [a.encoders["l"].tokens[p].text for p in a.find("dog").positions["l"]] == ["dog</w>"]
