"""Follow the Flow on HiDream (tiny text encoders, QuadrupleCLIPLoader): the edits change its T5 rows (the
CONDITIONING) and its Llama rows (every layer of 'conditioning_llama3') together. References are written here: the
empty prompt as CLIPTextEncode encodes "" (both padded to 128 tokens), dense row selection, and which Llama tokens
follow a set of T5 rows, by characters."""

import pytest
import torch

import tiny_models

TEXT = "a red cat"
LONG_WORDS = "a hippopotamus beside a xylophone"
LLAMA = "conditioning_llama3"


@pytest.fixture(scope="module")
def clip(comfy_nodes, leakless):
    import nodes

    if "hidream" not in tiny_models.text_encoders():
        pytest.skip("no HiDream text encoder")
    loader, inputs = tiny_models.text_encoders()["hidream"]
    cls = nodes.NODE_CLASS_MAPPINGS[loader]
    return getattr(cls(), cls.FUNCTION)(**inputs)[0]


def run(node_id, **kw):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id].execute(**kw).args


def encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0][0]


def align(clip, text):
    from leakless.nodes.driver.clip import align_clip

    return align_clip("test", clip, text)


def llama_replaced(a, replaced):
    """Llama tokens that follow the replaced T5 rows: those whose characters are shared only with replaced T5
    tokens (at least one); those without characters when every T5 token without characters is replaced."""
    chars = {t.position: set(range(*t.span)) for t in a.rows.tokens if t.span is not None}
    charless_replaced = all(t.position in replaced for t in a.rows.tokens if t.span is None)
    out = set()
    for t in a.encoders["llama"].tokens:
        sharing = {p for p, c in chars.items() if t.span is not None and c & set(range(*t.span))}
        if (charless_replaced if t.span is None else sharing and sharing <= replaced):
            out.add(t.position)
    return out


def dense(cond, empty, replaced):
    """Rows (dim -2) at `replaced` from `empty`, the others from `cond`, one by one."""
    return torch.stack([empty[..., i, :] if i in replaced else cond[..., i, :] for i in range(cond.shape[-2])], -2)


LLAMA_PAD = 128009  # ComfyUI's HiDream Llama pad token (comfy/text_encoders/hidream.py)


def empty_encoding(clip, llama_length):
    """CLIPTextEncode's "", with its Llama tokens padded on the right to `llama_length` (both are padded to 128;
    ComfyUI does not cut Llama at 128, T5 it does)."""
    tokens = clip.tokenize("")
    tokens["llama"] = [list(tokens["llama"][0]) + [(LLAMA_PAD, 1.0)] * (llama_length - len(tokens["llama"][0]))]
    return clip.encode_from_tokens_scheduled(tokens)[0]


def expected(clip, text, replaced):
    base, meta = encode(clip, text)
    empty, empty_meta = empty_encoding(clip, meta[LLAMA].shape[-2])
    assert empty.shape == base.shape and empty_meta[LLAMA].shape == meta[LLAMA].shape
    return dense(base, empty, replaced), dense(meta[LLAMA], empty_meta[LLAMA], llama_replaced(align(clip, text),
                                                                                              replaced))


def trace(clip, text, mode, selection="", include_full_prompt=False):
    return run("LeaklessTokenTrace", clip=clip, text=text, mode=mode, selection=selection,
               include_full_prompt=include_full_prompt, pooled_output="reference")


def test_trace_each_word_edits_t5_and_every_llama_layer(clip):
    base, meta = encode(clip, TEXT)
    before = base.clone(), meta[LLAMA].clone()
    (cond, out_meta), = trace(clip, TEXT, "each word", include_full_prompt=True)[0]
    a = align(clip, TEXT)
    assert cond.shape[0] == out_meta[LLAMA].shape[0] == 4  # the full prompt, then a, red, cat
    assert torch.equal(cond[:1], base) and torch.equal(out_meta[LLAMA][:1], meta[LLAMA])
    for i, word in enumerate(("a", "red", "cat"), start=1):
        replaced = set(range(a.rows.length)) - set(a.find(word).of("rows"))
        rows, llama = expected(clip, TEXT, replaced)
        assert torch.equal(cond[i:i + 1], rows), word
        assert torch.equal(out_meta[LLAMA][i:i + 1], llama), word
    assert torch.equal(base, before[0]) and torch.equal(meta[LLAMA], before[1])


def test_a_traced_word_keeps_its_own_llama_rows(clip):
    from test_tiny_text_encoders import llama3_through_transformers

    if llama3_through_transformers():
        pytest.skip("0.3.75 with transformers 5 tokenizes Llama 3 wrongly ('a red cat': 'ared', 'cat'; "
                    "tests/headless/test_tiny_text_encoders.py pins it)")
    a = align(clip, TEXT)
    llama = a.encoders["llama"]
    assert [llama.at(p).text for p in range(1, 4)] == ["a", "\u0120red", "\u0120cat"]
    (_, out_meta), = trace(clip, TEXT, "selection", "cat")[0]
    base_llama, empty_llama = encode(clip, TEXT)[1][LLAMA], encode(clip, "")[1][LLAMA]
    # only 'Ġcat' is kept; BOS and padding follow EOS and T5's padding, which are replaced
    assert torch.equal(out_meta[LLAMA], dense(base_llama, empty_llama, set(range(llama.length)) - {3}))
    assert not torch.equal(base_llama[..., 3, :], empty_llama[..., 3, :])


def test_tracing_everything_is_plain_encoding(clip):
    base, meta = encode(clip, TEXT)
    (cond, out_meta), = trace(clip, TEXT, "selection", f"0-{base.shape[1] - 1}")[0]
    assert torch.equal(cond, base) and torch.equal(out_meta[LLAMA], meta[LLAMA])
    assert set(out_meta) - {"leakless_prompt"} == set(meta)


def test_all_but_a_word(clip):
    a = align(clip, TEXT)
    (cond, out_meta), = trace(clip, TEXT, "all but selection", "red")[0]
    rows, llama = expected(clip, TEXT, set(a.find("red").of("rows")))
    assert torch.equal(cond, rows) and torch.equal(out_meta[LLAMA], llama)


def test_redundant_token_mask_manual_mode_edits_both(clip):
    a = align(clip, LONG_WORDS)
    removed = {p for w in ("hippopotamus", "xylophone") for p in a.find(w).of("rows")[:-1]}
    assert removed
    cond, report = run("LeaklessRedundantTokenMask", clip=clip, text=LONG_WORDS, mode="manual",
                       items="hippopotamus: mus\nxylophone: phone", classifier="none", threshold=0.5,
                       pooled_output="reference")
    rows, llama = expected(clip, LONG_WORDS, removed)
    assert torch.equal(cond[0][0], rows), report
    assert torch.equal(cond[0][1][LLAMA], llama), report
    assert llama_replaced(a, removed), "some Llama rows should follow"


def test_leak_patch_pastes_the_isolated_rows_in_both(clip):
    import nodes

    from test_tiny_text_encoders import llama3_through_transformers

    conditioning = nodes.CLIPTextEncode().encode(clip, TEXT)[0]
    base, meta = conditioning[0]
    before = base.clone(), meta[LLAMA].clone()
    if llama3_through_transformers():  # its Llama tokens of 'cat' differ from those of 'cat' alone: no half edit
        with pytest.raises(ValueError, match=r"'cat' is tokenized differently alone .* \(Llama-3.1-8B\)"):
            run("LeaklessLeakPatch", clip=clip, text=TEXT, items="cat", conditioning=conditioning)
        return
    (patched, out_meta), = run("LeaklessLeakPatch", clip=clip, text=TEXT, items="cat",
                               conditioning=conditioning)[0]
    # the item as it stands in the prompt, after a space: T5 spells 'cat' and ' cat' alike, Llama 3 ' cat' as 'Ġcat'
    iso, iso_meta = encode(clip, " cat")
    assert [t.text for t in align(clip, " cat").encoders["llama"].tokens[:2]] == ["<|begin_of_text|>", "\u0120cat"]
    rows, llama = base.clone(), meta[LLAMA].clone()
    rows[:, 3] = iso[:, 0]  # T5: '▁cat' at row 3 of the prompt, row 0 alone
    llama[:, :, 3] = iso_meta[LLAMA][:, :, 1]  # Llama: 'Ġcat' at 3 in the prompt, 1 alone (after BOS)
    assert torch.equal(patched, rows) and torch.equal(out_meta[LLAMA], llama)
    assert not torch.equal(out_meta[LLAMA], meta[LLAMA])
    assert torch.equal(base, before[0]) and torch.equal(meta[LLAMA], before[1])


def test_llama_rows_of_another_length_are_refused_clearly(clip):
    import nodes

    (base, meta), = nodes.CLIPTextEncode().encode(clip, TEXT)[0]
    cut = [[base, {**meta, LLAMA: meta[LLAMA][:, :, :100]}]]
    with pytest.raises(ValueError, match=r"Leak Patch: input 'conditioning': it has 100 token rows in "
                                         r"'conditioning_llama3' where the text has 128 Llama-3.1-8B tokens"):
        run("LeaklessLeakPatch", clip=clip, text=TEXT, items="red", conditioning=cut)



def test_a_long_prompt_past_128_tokens(clip):
    """ComfyUI cuts T5 at 128 tokens and lets Llama run on; the empty prompt's Llama rows are padded to as many."""
    text = ", ".join(f"a red cat number {i}" for i in range(30))
    a = align(clip, text)
    assert a.rows.length == 128 < a.encoders["llama"].length
    (cond, out_meta), = trace(clip, text, "selection", "cat#3")[0]
    rows, llama = expected(clip, text, set(range(128)) - set(a.find("cat", 3).of("rows")))
    assert torch.equal(cond, rows) and torch.equal(out_meta[LLAMA], llama)


def test_leak_patch_on_a_long_prompt(clip):
    from test_tiny_text_encoders import llama3_through_transformers

    if llama3_through_transformers():
        pytest.skip("0.3.75 with transformers 5 tokenizes Llama 3 wrongly (see the Leak Patch test above)")
    text = ", ".join(f"a red cat number {i}" for i in range(30))
    base, meta = encode(clip, text)
    assert meta[LLAMA].shape[-2] > 128  # the item alone has 128 Llama rows: pasted by position all the same
    (patched, out_meta), = run("LeaklessLeakPatch", clip=clip, text=text, items="cat#2")[0]
    a, iso_meta = align(clip, text), encode(clip, " cat")[1]
    llama = meta[LLAMA].clone()
    llama[:, :, a.find("cat", 2).positions["llama"]] = iso_meta[LLAMA][:, :, [1]]
    assert torch.equal(out_meta[LLAMA], llama)
