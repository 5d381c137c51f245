"""Pure Follow the Flow code: row edits against a dense reference, the redundancy rules and classifiers on synthetic
data with a known answer, the labelled grid."""

import math

import pytest
import torch


@pytest.fixture(scope="module")
def flow(leakless):
    import leakless.nodes.methods.flow as flow

    return flow


@pytest.fixture(scope="module")
def red(leakless):
    import leakless.nodes.methods.redundancy as red

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


def test_grid_caps_columns_and_label_lines(leakless):
    from leakless.nodes.methods.grid import labelled_grid

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
    item = flow.Item("pelican", (0, 7), (5, 6, 7))
    d = red.manual_rule(item, ["LIC"], ["\u2581pe", "lic", "an"])
    assert d.keep == (6,) and d.remove == (5, 7)
    assert red.manual_rule(item, ["3"], ["a", "b", "c"]).keep == (7,)
    with pytest.raises(red.RedundancyError, match="no token 'x'; its tokens are"):
        red.manual_rule(item, ["x"], ["a", "b", "c"])


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
