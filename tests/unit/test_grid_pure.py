"""nodes/grid.py: the label layout against a word-by-word reference (the layout it had, which was quadratic in a
long word), its bounded cost, and the grid's interrupt hook."""

import time

import pytest
import torch
from PIL import Image, ImageDraw


@pytest.fixture(scope="module")
def grid(leakless):
    import leakless.nodes.methods.grid as grid

    return grid


def reference_lines(draw, label, font, width, max_lines):
    """Written for the test, word by word: greedy whole words; a word wider than a line alone on its line, cut to
    end in '…'; a label with more than `max_lines` lines ends in '…'."""
    def cut(line):
        while line and draw.textlength(line + "\u2026", font=font) > width:
            line = line[:-1]
        return line.rstrip() + "\u2026"

    lines, line = [], ""
    for word in label.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines += [line] if line else []
    kept = [line if draw.textlength(line, font=font) <= width else cut(line) for line in lines[:max_lines]]
    if len(lines) > max_lines:
        kept[-1] = cut(kept[-1].rstrip("\u2026"))
    return kept


LABELS = ["", "a", "full prompt", "cow: \u2581cow", "a cat and a dog wearing a hat in the rain " * 3,
          "supercalifragilisticexpialidocious " * 2 + "cat", "a " + "x" * 300 + " b c", "x" * 500,
          "\u732b " * 40, "a  b\tc", "red, blue; green" * 10]


@pytest.mark.parametrize("width", [0, 8, 48, 120, 300])
def test_lines_agree_with_the_reference(grid, width):
    font = grid._font(10)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for label in LABELS:
        assert grid.label_lines(draw, label, font, width, 3) == reference_lines(draw, label, font, width, 3), label


def test_the_layout_reads_only_what_fits(grid):
    font = grid._font(20)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for label in ("x" * 100_000, " ".join(["ab"] * 50_000), "\u200b" * 100_000):
        start = time.perf_counter()
        lines = grid.label_lines(draw, label, font, 1000, 3)
        assert time.perf_counter() - start < 1 and lines[-1].endswith("\u2026")


def test_grid_calls_its_hook_once_per_image_and_stops_when_it_raises(grid):
    images = torch.rand(5, 8, 8, 3)
    calls = []
    grid.labelled_grid(images, ["a"] * 5, on_image=lambda: calls.append(1))
    assert len(calls) == 5

    class Stop(Exception):
        pass

    def stop():
        calls.append(1)
        if len(calls) > 7:
            raise Stop

    with pytest.raises(Stop):
        grid.labelled_grid(images, ["a"] * 5, on_image=stop)
    assert len(calls) == 8


def test_grid_size_is_known_before_any_drawing(grid):
    assert grid.grid_size(9, 40, 56, columns=0, font_size=10, gap=4, max_lines=3) == (3 * 56 + 8, 3 * 90 + 8)
    assert grid.grid_size(3, 40, 56, columns=1, font_size=20, gap=4, max_lines=3) == (56, 3 * 120 + 8)
