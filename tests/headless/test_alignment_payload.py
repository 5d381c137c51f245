"""PromptAlignment.payload (the token picker's and the Token Inspector's payload) and the linear-cost helpers of
the alignment, against independent references written here."""

import json
import random
import re
import time
from pathlib import Path

import pytest

PROMPTS = json.loads((Path(__file__).resolve().parents[1] / "data" / "prompts.json").read_text())
EMOJI_CJK = ("\U0001f600\u6f22\u5b57" * 7000)[:20_000]


@pytest.fixture(scope="module")
def alignment(leakless):
    return leakless.nodes.text.alignment


def reference_word_range(to_prompt, words, span):
    """Brute force: every word with a character inside span (an empty span counts its first character)."""
    lo = sum(1 for i in to_prompt if i < span[0])
    hi = max(sum(1 for i in to_prompt if i < span[1]), lo + 1)
    hit = [k for k, (s, e) in enumerate(words) if s < hi and e > lo]
    return (hit[0], hit[-1]) if hit else None


def test_word_range_matches_brute_force(alignment):
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab  \n") for _ in range(rng.randint(0, 30)))
        to_prompt = sorted(rng.sample(range(60), len(text)))
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        starts = [s for s, _ in words]
        a = rng.randint(0, 60)
        span = (a, a + rng.randint(0, 10))
        assert alignment._word_range(to_prompt, words, starts, span) == reference_word_range(to_prompt, words, span)


def test_prompt_span_matches_min_max(alignment):
    rng = random.Random(1)
    for _ in range(300):
        index = sorted(rng.sample(range(100), rng.randint(0, 20)))
        for k in sorted(rng.sample(range(len(index) + 1), min(3, len(index) + 1)), reverse=True):
            index.insert(k, -1)  # characters ComfyUI inserted (a space between re-joined words)
        a = rng.randint(0, len(index))
        off = (a, a + rng.randint(0, 8))
        real = [i for i in index[off[0]:off[1]] if i >= 0]
        assert alignment._prompt_span(index, off) == ((min(real), max(real) + 1) if real else None)


@pytest.mark.parametrize("family", ("sd15", "sdxl", "flux"))
def test_payload_lists_each_word_once_and_every_token(alignment, tokenizers, family):
    for prompt in PROMPTS:
        a = alignment.align(prompt, tokenizers[family])
        p = a.payload()
        assert [w["word"] for w in p["words"]] == a.words()
        for w, (s, e) in zip(p["words"], a.word_spans, strict=True):
            start, end = a.plain_to_prompt[s], a.plain_to_prompt[e - 1] + 1
            assert w["span"] == [start, end]
            assert w["tokens"] == {k: len(enc.positions_in(start, end)) for k, enc in a.encoders.items()}
        for enc, out in zip(a.encoders.values(), p["encoders"], strict=True):
            tokens = [t for t in enc.tokens if t.kind != "pad"]
            assert out["position"] == [t.position for t in tokens] and out["text"] == [t.text for t in tokens]
            assert out["kind"] == [t.kind for t in tokens] and out["weight"] == [t.weight for t in tokens]
            for t, i in zip(tokens, out["word"], strict=True):
                assert (i is None) == (t.word == ""), (prompt, t)
                assert i is None or t.word.startswith(p["words"][i]["word"])


@pytest.mark.parametrize("text", [EMOJI_CJK, "(" * 20_000, "a " * 10_000], ids=["emoji-cjk", "parens", "spaced"])
def test_worst_prompts_cost_linear_time_and_memory(alignment, tokenizers, text):
    """20,000 characters: seconds, one shared string per word, a payload of well under 150 bytes a character (it
    was quadratic: every token carried its whole word)."""
    for family in ("sdxl", "flux"):
        started = time.perf_counter()
        a = alignment.align(text, tokenizers[family])
        size = len(json.dumps(a.payload(), ensure_ascii=False).encode())
        assert time.perf_counter() - started < 30
        assert size < 150 * len(text), (family, size)
        for enc in a.encoders.values():
            assert len({id(t.word) for t in enc.tokens if t.word}) <= len(a.word_spans)


def test_too_deep_parentheses_are_a_clear_error(alignment, tokenizers):
    with pytest.raises(alignment.PromptNestingError, match="nest too deeply"):
        alignment.align("(" * 2000 + "cat" + ")" * 2000, tokenizers["sdxl"])
    assert alignment.align("(" * 50 + "cat" + ")" * 50, tokenizers["sdxl"]).words() == ["cat"]
