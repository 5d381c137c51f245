"""flow.following_rows (which of HiDream's Llama tokens follow an edit of the T5 rows) against a brute-force
reference over characters, on random token layouts."""

import random

import pytest


@pytest.fixture(scope="module")
def mods(leakless):
    import leakless.nodes.text.alignment as alignment
    import leakless.nodes.methods.flow as flow

    return alignment, flow


def layout(alignment, rng, key, n_text, n_special, length):
    """`n_text` tokens with random character spans in a 30-character prompt, then `n_special` without characters."""
    tokens = []
    for i in range(n_text + n_special):
        start = rng.randrange(30)
        span = (start, start + rng.randint(1, 6)) if i < n_text else None
        tokens.append(alignment.Token(i, 0, i, f"t{i}", "text" if span else "pad", 1.0, int(bool(span)), span, ""))
    assert len(tokens) == length
    return alignment.EncoderTokens(key, tuple(tokens), (length,), True)


def brute_force(rows, other, replaced):
    chars = {t.position: set(range(*t.span)) for t in rows.tokens if t.span is not None}
    charless = [t.position for t in rows.tokens if t.span is None]
    out = []
    for t in other.tokens:
        if t.span is None:
            hit = all(p in replaced for p in charless)
        else:
            sharing = [p for p, c in chars.items() if c & set(range(*t.span))]
            hit = len(sharing) > 0 and set(sharing) <= set(replaced)
        if hit:
            out.append(t.position)
    return out


def test_following_rows_matches_brute_force(mods):
    alignment, flow = mods
    rng = random.Random(0)
    for _ in range(300):
        n_rows, n_other = rng.randint(1, 12), rng.randint(0, 12)
        specials = rng.randint(1, 4)
        rows = layout(alignment, rng, "rows", n_rows, specials, n_rows + specials)
        other_specials = rng.randint(0, 4)
        other = layout(alignment, rng, "llama", n_other, other_specials, n_other + other_specials)
        replaced = {p for p in range(rows.length) if rng.random() < 0.5}
        assert flow.following_rows(rows, other, replaced) == brute_force(rows, other, replaced)
        assert flow.following_rows(rows, other, []) == []


def test_a_word_keeps_its_rows_in_both(mods):
    alignment, flow = mods
    T = alignment.Token
    # T5: '▁red' '▁cat' </s> pad; Llama: BOS 'Ġred' 'Ġc' 'at' pad
    rows = alignment.EncoderTokens("rows", (T(0, 0, 1, "▁red", "text", 1.0, 1, (0, 3), "red"),
                                            T(1, 0, 2, "▁cat", "text", 1.0, 1, (4, 7), "cat"),
                                            T(2, 0, 3, "</s>", "eos", 1.0, 0, None, ""),
                                            T(3, 0, 0, "<pad>", "pad", 1.0, 0, None, "")), (4,), True)
    llama = alignment.EncoderTokens("llama", (T(0, 0, 9, "<bos>", "bos", 1.0, 0, None, ""),
                                              T(1, 0, 5, "Ġred", "text", 1.0, 1, (0, 3), "red"),
                                              T(2, 0, 6, "Ġc", "text", 1.0, 1, (3, 5), "cat"),
                                              T(3, 0, 7, "at", "text", 1.0, 1, (5, 7), "cat"),
                                              T(4, 0, 8, "<pad>", "pad", 1.0, 0, None, "")), (5,), True)
    assert flow.following_rows(rows, llama, [0, 2, 3]) == [0, 1, 4]  # trace 'cat': its Llama tokens kept
    assert flow.following_rows(rows, llama, [0]) == [1]  # 'Ġc' starts in the space: it shares only 'cat''s characters
    assert flow.following_rows(rows, llama, [2]) == []  # EOS alone: the pads still hold characterless rows
