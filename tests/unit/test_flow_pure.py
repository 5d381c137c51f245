"""Pure Follow the Flow code: row edits against a dense reference, selection parsing, the redundancy rules and
classifiers on synthetic data with a known answer."""

import math

import pytest
import torch


@pytest.fixture(scope="module")
def flow(leakless):
    import leakless.nodes.flow as flow

    return flow


@pytest.fixture(scope="module")
def red(leakless):
    import leakless.nodes.redundancy as red

    return red


def dense(cond, empty, take_from_empty):
    out = torch.empty_like(cond)
    for i in range(cond.shape[1]):
        out[:, i] = empty[:, i] if i in take_from_empty else cond[:, i]
    return out


def test_row_edits_match_dense_reference(flow):
    g = torch.Generator().manual_seed(0)
    cond, empty = torch.randn(2, 77, 48, generator=g), torch.randn(2, 77, 48, generator=g)
    c0, e0 = cond.clone(), empty.clone()
    assert torch.equal(flow.replace_rows(cond, empty, [3, 5, 5, 76]), dense(cond, empty, {3, 5, 76}))
    assert torch.equal(flow.keep_rows(cond, empty, [0, 4]), dense(cond, empty, set(range(77)) - {0, 4}))
    assert torch.equal(flow.keep_rows(cond, empty, range(77)), cond)
    assert torch.equal(flow.replace_rows(cond, empty, []), cond)
    src = torch.randn(2, 10, 48, generator=g)
    pasted = flow.paste_rows(cond, src, [1, 2], [40, 41])
    expected = cond.clone()
    expected[:, 40], expected[:, 41] = src[:, 1], src[:, 2]
    assert torch.equal(pasted, expected)
    assert torch.equal(cond, c0) and torch.equal(empty, e0)
    with pytest.raises(ValueError, match="differ in shape"):
        flow.replace_rows(cond, empty[:, :70], [1])


def test_parse_refs(flow):
    P, R = flow.PhraseRef, flow.PositionRef
    assert flow.parse_refs("cow; horse\ncow, horse , 3, 5-7\n\n cat#2 ") == [
        [P("cow")], [P("horse")], [P("cow"), P("horse"), R(3, 3), R(5, 7)], [P("cat", 2)]]
    assert flow.parse_refs("  ;\n ") == []
    assert str(P("cat", 2)) == "cat#2" and str(R(5, 7)) == "5-7"
    with pytest.raises(flow.SelectionError, match="empty range"):
        flow.parse_refs("9-3")
    with pytest.raises(flow.SelectionError, match="count from 1"):
        flow.parse_refs("cat#0")


def test_lexical_items_skip_punctuation_and_keep_hyphens(flow, tokenizers):
    from leakless.nodes.alignment import align

    a = align("a red-haired woman, (golden:1.2) gate; don't!", tokenizers["flux"])
    assert [it.label for it in flow.lexical_items(a, "t5xxl")] == ["a", "red-haired", "woman", "golden", "gate",
                                                                    "don't"]
    named = flow.named_items(a, "t5xxl", "gate; golden gate")
    assert [it.label for it in named] == ["golden gate", "gate"]  # prompt order


def test_labels_are_the_words_a_person_reads(flow, tokenizers):
    from leakless.nodes.alignment import align

    a = align("a cow and bats", tokenizers["flux"])
    n = a.encoders["t5xxl"].length
    assert [t.text for t in a.encoders["t5xxl"].tokens[:7]] == ["\u2581", "a", "\u2581cow", "\u2581and",
                                                                "\u2581bat", "s", "</s>"]
    assert flow.token_label(a, "t5xxl", range(n)) == f"a cow and bat s </s> <pad x{n - 7}>"
    assert flow.token_label(a, "t5xxl", [4, 5]) == "bat s" and flow.token_label(a, "t5xxl", []) == "(nothing)"
    assert flow.token_label(a, "t5xxl", [0]) == "(space)"
    refs, = flow.parse_refs("cow, bats, 4-5, 7-10")
    assert flow.selection_label(a, "t5xxl", refs) == "cow, bats, bat s, <pad x4>"
    c = align("a cow", tokenizers["sdxl"])
    assert flow.token_label(c, "l", [1, 2, 3]) == "a cow <|endoftext|>"
    long = align(" ".join(["horse"] * 40), tokenizers["sdxl"])
    label = flow.token_label(long, "l", range(1, 41))
    assert len(label) == flow.LABEL_CHARS and label == ("horse " * 14)[:flow.LABEL_CHARS - 1] + "\u2026"


def test_grid_caps_columns_and_label_lines(leakless):
    from leakless.nodes.grid import labelled_grid

    images = torch.rand(3, 40, 56, 3)
    wide = labelled_grid(images, ["a", "b", "c"], columns=10, font_size=10)
    assert wide.shape[2] == 3 * 56 + 2 * 4  # three columns, not ten
    short = labelled_grid(images[:1], ["a"], font_size=10)
    tall = labelled_grid(images[:1], [" ".join(["horse"] * 300)], font_size=10)
    line = 10 + 4
    assert tall.shape[1] - short.shape[1] == 2 * line  # three lines at most, not 100
    unspaced = labelled_grid(images[:1], ["x" * 500], font_size=10)
    assert unspaced.shape == short.shape


def synthetic(n_items=60, tokens=3, width=16, seed=0):
    """Items whose redundant tokens lie near one direction and representative ones near another."""
    g = torch.Generator().manual_seed(seed)
    red_dir, rep_dir = torch.zeros(width), torch.zeros(width)
    red_dir[0], rep_dir[1] = 1.0, 1.0
    x, y, items = [], [], []
    for i in range(n_items):
        for t in range(tokens):
            label = 0.0 if t == i % tokens else 1.0
            x.append((red_dir if label else rep_dir) * 3 + torch.randn(width, generator=g) * 0.3)
            y.append(label)
            items.append(f"item{i}")
    return torch.stack(x), torch.tensor(y), items


@pytest.mark.parametrize("kind", ["knn", "linear"])
def test_fit_recovers_a_known_answer(red, kind, tmp_path):
    x, y, items = synthetic()
    train, test = red.split_by_item(items, 0.75, seed=1)
    assert not {items[i] for i in train} & {items[i] for i in test}
    clf = red.fit_knn(x[train], y[train], 5) if kind == "knn" else red.fit_linear(x[train], y[train])
    predicted = clf.scores(x[test]) > 0.5
    assert red.redundant_precision(predicted, y[test]) == 1.0
    assert bool((predicted == y[test].bool()).all())
    red.save(clf, str(tmp_path / "c.safetensors"))
    again = red.load(str(tmp_path / "c.safetensors"))
    assert again.kind == kind and again.width == 16
    assert torch.equal(again.scores(x[test]), clf.scores(x[test]))


def test_precision_definition(red):
    assert red.redundant_precision(torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 0, 1])) == pytest.approx(2 / 3)
    assert math.isnan(red.redundant_precision(torch.tensor([0, 0]), torch.tensor([1, 0])))


def test_decisions_never_touch_single_tokens_or_empty_an_item(red, flow):
    Item = flow.Item
    items = [Item("cat", (0, 3), (1,)), Item("pelican", (4, 11), (2, 3, 4))]
    feats = torch.zeros(6, 4)
    feats[2, 0], feats[3, 1], feats[4, 0], feats[1, 0] = 1, 1, 1, 1
    clf = red.RedundancyClassifier("linear", 4, {"weight": torch.tensor([9.0, -9.0, 0, 0]),
                                                 "bias": torch.tensor([0.0])})
    cat, pelican = clf.decide(items, feats)
    assert cat.remove == () and cat.note == "single token"
    assert pelican.keep == (3,) and pelican.remove == (2, 4)
    everything = red.RedundancyClassifier("linear", 4, {"weight": torch.tensor([9.0, 5.0, 0, 0]),
                                                        "bias": torch.tensor([0.0])})
    (_, pelican) = everything.decide(items, feats)
    assert len(pelican.keep) == 1 and "least redundant" in pelican.note
    assert [d.keep for d in red.causal_rule(items)] == [(1,), (4,)]


def test_manual_spec(red, flow):
    assert red.parse_manual("pelican: lic; golden gate bridge: gate, 1") == [
        ("pelican", ["lic"]), ("golden gate bridge", ["gate", "1"])]
    item = flow.Item("pelican", (0, 7), (5, 6, 7))
    d = red.manual_rule(item, ["LIC"], ["\u2581pe", "lic", "an"])
    assert d.keep == (6,) and d.remove == (5, 7)
    assert red.manual_rule(item, ["3"], ["a", "b", "c"]).keep == (7,)
    with pytest.raises(red.RedundancyError, match="no token 'x'; its tokens are"):
        red.manual_rule(item, ["x"], ["a", "b", "c"])
    with pytest.raises(red.RedundancyError, match="does not say which tokens"):
        red.parse_manual("pelican")


def test_manual_numbers_are_indices_or_quoted_texts(red, flow):
    """'2' is the 2nd token, '#2' always an index, '"2"' a token's text; a bare number that is also one of the
    item's tokens is an error naming both readings."""
    item = flow.Item("1984", (0, 4), (2, 3, 4, 5))
    texts = ["1</w>", "9</w>", "8</w>", "4</w>"]
    assert red.manual_rule(item, ["2"], texts).keep == (3,) and red.manual_rule(item, ["#1"], texts).keep == (2,)
    assert red.manual_rule(item, ['"9"'], texts).keep == (3,) and red.manual_rule(item, ["#4"], texts).keep == (5,)
    with pytest.raises(red.RedundancyError, match=r"'1' is read as token 1 of '1984' \(a 1-based index\), but '1' "
                                                  r"is also one of its tokens; write #1 for the index, \"1\" for"):
        red.manual_rule(item, ["1"], texts)
    with pytest.raises(red.RedundancyError, match="there is no token 7"):
        red.manual_rule(item, ["#7"], texts)


def test_classifier_width_and_file_checks(red, tmp_path):
    clf = red.fit_knn(torch.randn(5, 8), torch.tensor([0, 1, 0, 1, 1]), 3, {"family": "sdxl", "encoder": "l"})
    with pytest.raises(red.RedundancyError, match="8-wide token features .*sdxl l.* gives 4-wide"):
        clf.scores(torch.randn(2, 4))
    import safetensors.torch

    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(red.RedundancyError, match="not a Leakless redundancy classifier"):
        red.load(str(tmp_path / "other.safetensors"))


def test_words_and_positions_are_unambiguous(flow, tokenizers):
    """A bare number is a position in a selection and a word elsewhere; '"1984"' is always a word, '@3' always a
    position; a bare number that is also a word of the prompt is an error that says how to write each reading."""
    from leakless.nodes.alignment import PhraseNotFoundError, align

    P, R = flow.PhraseRef, flow.PositionRef
    assert flow.parse_refs('"1984", @3, @5-7, 3, "C#"#2, "a, b; c"') == [
        [P("1984"), R(3, 3), R(5, 7), R(3, 3), P("C#", 2), P("a, b; c")]]
    assert [str(r) for r in flow.parse_refs('"1984", @3, 3, round#1, "x"#2')[0]] == [
        '"1984"', "@3", "3", "round#1", '"x"#2']
    assert flow.parse_phrases("1984, 2-3; 7", "entities") == [P("1984"), P("2-3"), P("7")]
    assert flow.parse_refs("round#1")[0][0].explicit and not flow.parse_refs("round")[0][0].explicit
    for bad, message in (('"cat', "unclosed"), ('big "cat"', "whole phrase"), ('""', "names no word")):
        with pytest.raises(flow.SelectionError, match=message):
            flow.parse_refs(bad)
    with pytest.raises(flow.SelectionError, match=r"entities are words of the prompt, not token positions \('@3'\)"):
        flow.parse_phrases("cow, @3", "entities")

    a = align("a 1984 poster with 3 cats", tokenizers["sdxl"])
    resolve = lambda text: flow.resolve_refs(a, "l", flow.parse_refs(text)[0])  # noqa: E731
    assert resolve('"1984"') == [2, 3, 4, 5] and resolve('"3"') == [8] and resolve("@3") == [3]
    assert resolve("4") == [4] and resolve("1984#1") == [2, 3, 4, 5]
    with pytest.raises(flow.SelectionError, match=r"'3' is read as token position\(s\) 3, but '3' is also a word "
                                                   r"of the prompt; write \"3\" for the word, @3 for the position"):
        resolve("3")
    with pytest.raises(flow.SelectionError, match=r"out of range.*'300-1984' is read as token position\(s\); "
                                                   r"write \"300-1984\""):
        resolve("300-1984")
    with pytest.raises(PhraseNotFoundError, match=r"'9999' was read as a word of the prompt, not as a token position"):
        flow.find_ref(a, flow.parse_phrases("9999", "items")[0])
    assert flow.find_ref(a, flow.parse_phrases("1984", "items")[0]).positions["l"] == [2, 3, 4, 5]
    assert [it.label for it in flow.named_items(a, "l", "3, 1984")] == ["1984", "3"]


def test_words_never_span_two_segments(flow, tokenizers):
    """ComfyUI tokenizes each weighted segment alone: '(red)(cat)' is two words, as is '(big)dog'."""
    from leakless.nodes.alignment import align

    a = align("(red)(cat) a (big)dog", tokenizers["sdxl"])
    assert a.words() == ["red", "cat", "a", "big", "dog"]
    assert [it.label for it in flow.lexical_items(a, "l")] == ["red", "cat", "a", "big", "dog"]
    assert a.find("cat").positions["l"] == [2] and a.find("dog").positions["l"] == [5]
    assert flow.resolve_refs(a, "l", flow.parse_refs("red, dog")[0]) == [1, 5]
    assert a.find_spans("redcat") == [] and a.find_spans("bigdog") == []


def test_a_number_with_a_thousands_comma_says_to_quote_it(flow):
    """Everywhere nothing is a position, '1,000' would read as the phrases '1' and '000': an error that says how to
    write it; quoted, it is one phrase. Selections keep '3,5' as two positions."""
    for text in ("1,000", "1,000 cows, horse", "horse; 2,5"):
        with pytest.raises(flow.SelectionError, match=r'write "[0-9]+,[0-9]+( cows)?" in double quotes'):
            flow.parse_phrases(text, "entities")
    assert [str(r) for r in flow.parse_phrases('"1,000", horse', "entities")] == ['"1,000"', "horse"]
    assert [str(r) for r in flow.parse_phrases("2, 3", "entities")] == ["2", "3"]
    assert flow.parse_refs("3,5") == [[flow.PositionRef(3, 3), flow.PositionRef(5, 5)]]


def test_parts_count_what_the_parsers_read(flow):
    assert flow.parts("cow; horse\n\n ;cat, dog", ";\n") == ["cow", "horse", "cat, dog"]
    assert flow.parts('"a;b"; c', ";\n") == ['"a;b"', "c"]
    assert flow.parts('"a;b', ";\n") == ['"a', "b"]  # an unclosed quote: counted as plain text
    assert flow.parts("", ";\n") == []


def test_a_batch_of_edits_equals_each_edit(flow):
    g = torch.Generator().manual_seed(0)
    steps = []
    for shape in ((2, 77, 48), (1, 3, 20, 8)):  # CLIP rows; HiDream's Llama rows [B, layers, L, D]
        cond, empty = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        c0 = cond.clone()
        variants = [[], [0, 5], list(range(shape[-2]))]
        out = flow.replace_rows_batch(cond, empty, variants, on_variant=lambda: steps.append(1))
        assert torch.equal(out, torch.cat([flow.replace_rows(cond, empty, v) for v in variants]))
        assert torch.equal(cond, c0)
    assert len(steps) == 6
