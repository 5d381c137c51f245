"""The pure text and method modules on ComfyUI's real tokenizers (CLIP-L/G, T5, the LLMs' BPE): lexical items,
token labels, words and positions of selections, ToMe's groups, byte-level offsets. They need ComfyUI's tokenizer
classes, so they run here rather than in the fast unit tier."""

import pytest


@pytest.fixture(scope="module")
def flow(leakless):
    import leakless.nodes.methods.flow as flow

    return flow


@pytest.fixture(scope="module")
def grammar(leakless):
    import leakless.nodes.text.grammar as grammar

    return grammar


@pytest.fixture(scope="module")
def tome(leakless):
    import leakless.nodes.methods.tome as tome

    return tome


def test_lexical_items_skip_punctuation_and_keep_hyphens(flow, tokenizers):
    from leakless.nodes.text.alignment import align

    a = align("a red-haired woman, (golden:1.2) gate; don't!", tokenizers["flux"])
    assert [it.label for it in flow.lexical_items(a, "t5xxl")] == ["a", "red-haired", "woman", "golden", "gate",
                                                                    "don't"]
    named = flow.named_items(a, "t5xxl", "gate; golden gate")
    assert [it.label for it in named] == ["golden gate", "gate"]  # prompt order


def test_labels_are_the_words_a_person_reads(flow, tokenizers, grammar):
    from leakless.nodes.text.alignment import align

    a = align("a cow and bats", tokenizers["flux"])
    n = a.encoders["t5xxl"].length
    assert [t.text for t in a.encoders["t5xxl"].tokens[:7]] == ["\u2581", "a", "\u2581cow", "\u2581and",
                                                                "\u2581bat", "s", "</s>"]
    assert grammar.token_label(a, "t5xxl", range(n)) == f"a cow and bat s </s> <pad x{n - 7}>"
    assert grammar.token_label(a, "t5xxl", [4, 5]) == "bat s" and grammar.token_label(a, "t5xxl", []) == "(nothing)"
    assert grammar.token_label(a, "t5xxl", [0]) == "(space)"
    refs, = grammar.parse_refs("cow, bats, 4-5, 7-10")
    assert grammar.selection_label(a, "t5xxl", refs) == "cow, bats, bat s, <pad x4>"
    c = align("a cow", tokenizers["sdxl"])
    assert grammar.token_label(c, "l", [1, 2, 3]) == "a cow <|endoftext|>"
    long = align(" ".join(["horse"] * 40), tokenizers["sdxl"])
    label = grammar.token_label(long, "l", range(1, 41))
    assert len(label) == grammar.LABEL_CHARS and label == ("horse " * 14)[:grammar.LABEL_CHARS - 1] + "\u2026"


def test_words_and_positions_are_unambiguous(flow, tokenizers, grammar):
    """A bare number is a position in a selection and a word elsewhere; '"1984"' is always a word, '@3' always a
    position; a bare number that is also a word of the prompt is an error that says how to write each reading."""
    from leakless.nodes.text.alignment import PhraseNotFoundError, align

    P, R = grammar.PhraseRef, grammar.PositionRef
    assert grammar.parse_refs('"1984", @3, @5-7, 3, "C#"#2, "a, b; c"') == [
        [P("1984"), R(3, 3), R(5, 7), R(3, 3), P("C#", 2), P("a, b; c")]]
    assert [str(r) for r in grammar.parse_refs('"1984", @3, 3, round#1, "x"#2')[0]] == [
        '"1984"', "@3", "3", "round#1", '"x"#2']
    assert grammar.parse_phrases("1984, 2-3; 7", "entities") == [P("1984"), P("2-3"), P("7")]
    assert grammar.parse_refs("round#1")[0][0].explicit and not grammar.parse_refs("round")[0][0].explicit
    for bad, message in (('"cat', "unclosed"), ('big "cat"', "whole phrase"), ('""', "names no word")):
        with pytest.raises(grammar.SelectionError, match=message):
            grammar.parse_refs(bad)
    with pytest.raises(grammar.SelectionError, match=r"entities are words of the prompt, not token positions \('@3'\)"):
        grammar.parse_phrases("cow, @3", "entities")

    a = align("a 1984 poster with 3 cats", tokenizers["sdxl"])
    resolve = lambda text: grammar.resolve_refs(a, "l", grammar.parse_refs(text)[0])  # noqa: E731
    assert resolve('"1984"') == [2, 3, 4, 5] and resolve('"3"') == [8] and resolve("@3") == [3]
    assert resolve("4") == [4] and resolve("1984#1") == [2, 3, 4, 5]
    with pytest.raises(grammar.SelectionError, match=r"'3' is read as token position\(s\) 3, but '3' is also a word "
                                                   r"of the prompt; write \"3\" for the word, @3 for the position"):
        resolve("3")
    with pytest.raises(grammar.SelectionError, match=r"out of range.*'300-1984' is read as token position\(s\); "
                                                   r"write \"300-1984\""):
        resolve("300-1984")
    with pytest.raises(PhraseNotFoundError, match=r"'9999' was read as a word of the prompt, not as a token position"):
        grammar.find_ref(a, grammar.parse_phrases("9999", "items")[0])
    assert grammar.find_ref(a, grammar.parse_phrases("1984", "items")[0]).positions["l"] == [2, 3, 4, 5]
    assert [it.label for it in flow.named_items(a, "l", "3, 1984")] == ["1984", "3"]


def test_words_never_span_two_segments(flow, tokenizers, grammar):
    """ComfyUI tokenizes each weighted segment alone: '(red)(cat)' is two words, as is '(big)dog'."""
    from leakless.nodes.text.alignment import align

    a = align("(red)(cat) a (big)dog", tokenizers["sdxl"])
    assert a.words() == ["red", "cat", "a", "big", "dog"]
    assert [it.label for it in flow.lexical_items(a, "l")] == ["red", "cat", "a", "big", "dog"]
    assert a.find("cat").positions["l"] == [2] and a.find("dog").positions["l"] == [5]
    assert grammar.resolve_refs(a, "l", grammar.parse_refs("red, dog")[0]) == [1, 5]
    assert a.find_spans("redcat") == [] and a.find_spans("bigdog") == []


def test_groups_parse_and_resolve_on_the_sdxl_tokenizer(tome, tokenizers, grammar):
    from leakless.nodes.text.alignment import PhraseNotFoundError, align

    a = align("a cat wearing sunglasses and a dog wearing a hat", tokenizers["sdxl"])
    specs = grammar.parse_groups("cat: wearing sunglasses\n dog: wearing a hat")
    cat, dog = tome.resolve_groups(a, "l", specs)
    assert (cat.noun, cat.attributes, cat.anchor) == ((2,), (3, 4), "a cat wearing sunglasses")
    assert (dog.noun, dog.attributes, dog.anchor) == ((7,), (8, 9, 10), "a dog wearing a hat")
    assert tome.clean_prompt([cat, dog]) == "a cat and a dog"
    # an attribute word that occurs twice binds to the occurrence nearest its noun, after it first
    dog_only, = tome.resolve_groups(a, "l", grammar.parse_groups("dog: wearing"))
    assert dog_only.attributes == (8,)
    red, = tome.resolve_groups(align("a red cat and a blue dog", tokenizers["sdxl"]), "l",
                               grammar.parse_groups("cat: red"))
    assert red.attributes == (2,) and red.anchor == "a red cat"
    for bad, message in (("cat", "not 'noun: attribute"), ("cat:", "no attributes"), ("cat, dog: red", "one noun"),
                         ("cat: wearing sunglasses; dog: sunglasses", "share the word"),
                         ("cat: cat", "the noun itself")):
        with pytest.raises(grammar.SelectionError, match=message):
            tome.resolve_groups(a, "l", grammar.parse_groups(bad))
    with pytest.raises(PhraseNotFoundError, match="'horse' is not in the prompt"):
        tome.resolve_groups(a, "l", grammar.parse_groups("horse: wearing"))


def reference_attribute(prompt, attribute, noun, others=()):
    """Written for the test, on whitespace words (no tokenizer, no spans): the index of the word `attribute` (one
    word) that the rule picks for the one-word `noun`: the fewest words between, before on a tie, never past
    another group's noun (`others`, first occurrences); None where no occurrence is that near."""
    words = [w.lower() for w in prompt.split()]
    at = words.index(noun)
    bounds = [words.index(o) for o in others]
    low, high = max([b for b in bounds if b < at], default=-1), min([b for b in bounds if b > at], default=len(words))
    near = [i for i, w in enumerate(words) if w == attribute and low < i < high and i != at]
    return min(near, key=lambda i: (abs(i - at) - 1, i > at), default=None)


@pytest.mark.parametrize("prompt,group,others", [
    ("A black and white cat sits in a white sink", "cat: white", ()),
    ("A black and white cat sits in a white sink", "sink: white", ("cat",)),
    ("a round cinnamon roll and a round toaster pastry", "roll: round", ()),
    ("a round cinnamon roll and a round toaster pastry", "pastry: round", ("roll",)),
    ("a cat wearing sunglasses and a dog wearing a hat", "dog: wearing", ()),
    ("a cat wearing sunglasses and a dog wearing a hat", "cat: wearing", ("dog",)),
    ("a white cat white", "cat: white", ()),  # a tie: the one before
    ("white white cat and a dog white", "dog: white", ("cat",)),
    ("a red cat and a red dog and a bird", "bird: red", ("cat", "dog")),  # none near: refused
])
def test_repeated_attributes_follow_the_rule(tome, tokenizers, prompt, group, others, grammar):
    """The attribute ToMe binds, on the real SDXL tokenizer, against the whitespace-word reference."""
    from leakless.nodes.text.alignment import align

    a = align(prompt, tokenizers["sdxl"])
    noun, attribute = (p.strip() for p in group.split(":"))
    specs = grammar.parse_groups("; ".join([group] + [f"{o}: {o}#9" for o in others]))
    nouns = [a.find(s.noun.phrase).span for s in specs]
    want = reference_attribute(prompt, attribute, noun, others)
    if want is None:
        with pytest.raises(grammar.SelectionError, match=r"none of them is next to its noun .*#1 \("):
            tome.attribute_span(a, specs[0].attributes[0], nouns[0], nouns)
        return
    span = tome.attribute_span(a, specs[0].attributes[0], nouns[0], nouns)
    assert a.word_range(span)[0] == want


def test_an_explicit_occurrence_is_always_honoured(tome, tokenizers, grammar):
    from leakless.nodes.text.alignment import align

    a = align("a round cinnamon roll and a round toaster pastry", tokenizers["sdxl"])
    roll, pastry = tome.resolve_groups(a, "l", grammar.parse_groups("cinnamon roll: round#1; toaster pastry: round#2"))
    assert (roll.attributes, pastry.attributes) == ((2,), (7,))
    far, = tome.resolve_groups(a, "l", grammar.parse_groups("cinnamon roll: round#2"))  # even far from its noun
    assert far.attributes == (7,)
    with pytest.raises(grammar.SelectionError, match=r"share the word 'round'.*'#n'"):
        tome.resolve_groups(a, "l", grammar.parse_groups("cinnamon roll: round#1; toaster pastry: round#1"))
    cat, = tome.resolve_groups(align("A black and white cat sits in a white sink", tokenizers["sdxl"]), "l",
                               grammar.parse_groups("cat: black, white"))
    assert cat.attributes == (2, 4) and cat.anchor == "A black and white cat"
    poster = align("a 1984 poster", tokenizers["sdxl"])
    quoted, = tome.resolve_groups(poster, "l", grammar.parse_groups('poster: "1984"'))
    assert quoted.attributes == (2, 3, 4, 5)


@pytest.mark.parametrize("text", ["a red cat", "  two  spaces\nand a newline",
                                  "\U0001f600 emoji \u6f22\u5b57 caf\u00e9"])
def test_byte_level_offsets_equal_the_tokenizers_own(comfy, leakless, text):
    """The offsets Leakless derives from a byte-level vocabulary (for tokenizers without offset support, like
    ComfyUI's own tekken BPE) equal those Hugging Face's fast Qwen tokenizer reports."""
    import comfy.text_encoders.z_image

    from leakless.nodes.text.alignment import _byte_level_offsets, sub_tokenizer

    sub = sub_tokenizer(comfy.text_encoders.z_image.ZImageTokenizer(), "qwen3_4b")
    enc = sub.tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    assert _byte_level_offsets(sub, text, ids) == offsets
    assert _byte_level_offsets(sub, text + "x", ids) is None  # the bytes must add up to the text
