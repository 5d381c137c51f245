"""Follow the Flow and the Token Inspector on the newer families (Qwen-Image, Z-Image, FLUX.2 dev and Klein, Krea 2,
SD3, Chroma, HiDream, HunyuanImage 2.1, Lumina 2), on tiny random-weight text encoders loaded by the standard
loaders with the tokenizers ComfyUI ships. References are written here: where "a red cat"'s words are in the rows
the diffusion model reads (measured from ComfyUI's own tokenizers and encoders, not from Leakless), the empty prompt
inside the same template padded with the encoder's pad token, and dense row selection."""

import pytest
import torch

import comfy_env
import tiny_models

TEXT = "a red cat"
# family: (rows of "red" and "cat" in TEXT's CONDITIONING, rows of "cat" encoded alone, the pad id of the encoder)
WORD_ROWS = {
    "qwen_image": ({"red": [1], "cat": [2]}, [0], 151643),  # 34 system-template tokens stripped by ComfyUI
    "z_image": ({"red": [4], "cat": [5]}, [3], 151643),  # <|im_start|> user \n first
    "flux2": ({"red": [33], "cat": [34]}, [32], 11),  # BOS + 31 system-template tokens first
    "flux2_klein": ({"red": [4], "cat": [5]}, [3], 151643),
    "krea2": ({"red": [1], "cat": [2]}, [0], 151643),
    "sd3": ({"red": [2], "cat": [3]}, [1], None),  # CLIP-L/G rows (BOS first)
    "sd3_t5": ({"red": [2], "cat": [3]}, None, 0),
    "chroma": ({"red": [2], "cat": [3]}, None, 0),
    "hunyuan_image": ({"red": [1], "cat": [2]}, [0], 151643),  # Qwen-Image's template, system part stripped
    "lumina2": ({"red": [2], "cat": [3]}, [1], 0),  # <bos> first, no template; a tiny SentencePiece vocabulary
}
TEMPLATED = {"qwen_image", "z_image", "flux2", "flux2_klein", "krea2", "hunyuan_image"}
CHROMA = ("CLIPLoader", {"clip_name": "t5xxl_fp16.safetensors", "type": "chroma"})


def loader_of(family):
    if family == "chroma":
        return CHROMA
    available = tiny_models.text_encoders()
    if family not in available:
        pytest.skip(f"ComfyUI {comfy_env.COMFY_NAME} has no {family} text encoder")
    if family == "flux2" and not hasattr(tiny_models.te_module("flux"), "from_tekken_json"):
        pytest.skip("FLUX.2 dev's tokenizer cannot be built on this ComfyUI with transformers 5 "
                    "(tests/headless/test_tiny_text_encoders.py)")
    return available[family]


@pytest.fixture(scope="module")
def clip_of(comfy_nodes, leakless):
    import nodes

    cache = {}

    def get(family):
        if family not in cache:
            loader, inputs = loader_of(family)
            cls = nodes.NODE_CLASS_MAPPINGS[loader]
            cache[family] = getattr(cls(), cls.FUNCTION)(**inputs)[0]
        return cache[family]

    return get


def run(node_id, **kw):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id].execute(**kw).args


def encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0][0]


def empty_reference(clip, rows, pad):
    """The empty prompt at `rows` rows, built here: ComfyUI's tokens of "" (inside the family's template), padded on
    the right with the encoder's pad token to the prompt's token count, encoded by ComfyUI."""
    tokens = clip.tokenize("")
    cond = clip.encode_from_tokens_scheduled(tokens)[0][0]
    if cond.shape[1] == rows:
        return cond
    missing = rows - cond.shape[1]
    padded = {k: [list(chunks[0]) + [(pad, 1.0)] * missing] for k, chunks in tokens.items()}
    cond = clip.encode_from_tokens_scheduled(padded)[0][0]
    assert cond.shape[1] == rows
    return cond


def dense_keep(cond, empty, keep):
    return torch.stack([cond[:, i] if i in keep else empty[:, i] for i in range(cond.shape[1])], dim=1)


@pytest.mark.parametrize("family", sorted(WORD_ROWS))
def test_words_are_at_the_rows_the_model_reads(clip_of, family):
    from leakless.nodes.text.alignment import ROWS
    from leakless.nodes.driver.clip import align_clip

    clip = clip_of(family)
    a = align_clip("test", clip, TEXT)
    words, cat_alone, _ = WORD_ROWS[family]
    for word, rows in words.items():
        assert a.find(word).of(ROWS) == rows, word
    assert a.rows.length == encode(clip, TEXT)[0].shape[1]
    if cat_alone is not None:
        assert align_clip("test", clip, "cat").find("cat").of(ROWS) == cat_alone
    if family in TEMPLATED:  # the template's tokens are rows, shown, and never words of the prompt
        kinds = {t.kind for t in a.rows.tokens}
        assert "template" in kinds
        assert [w for w in a.words()] == ["a", "red", "cat"]
        with pytest.raises(ValueError, match="not in the prompt"):
            a.find("assistant")


@pytest.mark.parametrize("family", sorted(WORD_ROWS))
def test_trace_each_word_matches_dense_reference(clip_of, family):
    clip = clip_of(family)
    base = encode(clip, TEXT)[0]
    before = base.clone()
    (batched, _), = run("LeaklessTokenTrace", clip=clip, text=TEXT, mode="each word", selection="",
                        include_full_prompt=True, pooled_output="reference")[0]
    words, _, pad = WORD_ROWS[family]
    empty = empty_reference(clip, base.shape[1], pad)
    assert torch.equal(batched[:1], base)
    for i, word in enumerate(("red", "cat"), start=2):  # image 1 is "a", whose T5 rows include a lone "▁"
        assert torch.equal(batched[i:i + 1], dense_keep(base, empty, set(words[word]))), word
    assert torch.equal(base, before)


@pytest.mark.parametrize("family", sorted(WORD_ROWS))
def test_selecting_every_row_reproduces_clip_text_encode(clip_of, family):
    clip = clip_of(family)
    base, meta = encode(clip, TEXT)
    (cond, out_meta), = run("LeaklessTokenTrace", clip=clip, text=TEXT, mode="selection",
                            selection=f"0-{base.shape[1] - 1}", include_full_prompt=False,
                            pooled_output="reference")[0]
    assert torch.equal(cond, base)
    assert set(out_meta) - {"leakless_prompt"} == set(meta)


@pytest.mark.parametrize("family", sorted(f for f, (_, alone, _) in WORD_ROWS.items() if alone is not None))
def test_leak_patch_pastes_the_isolated_encoding_through_the_same_template(clip_of, family):
    clip = clip_of(family)
    base = encode(clip, TEXT)[0]
    # byte-level BPE spells "cat" after a space as one token 'Ġcat', Gemma's SentencePiece (no dummy prefix) as
    # '▁cat': the item is encoded as it stands, " cat"
    alone = encode(clip, " cat" if family in TEMPLATED | {"lumina2"} else "cat")[0]
    words, cat_alone, _ = WORD_ROWS[family]
    (patched, _), = run("LeaklessLeakPatch", clip=clip, text=TEXT, items="cat")[0]
    expected = base.clone()
    expected[:, words["cat"]] = alone[:, cat_alone]
    assert torch.equal(patched, expected)


@pytest.mark.parametrize("family", sorted(TEMPLATED))
def test_causal_rule_keeps_the_last_token_of_each_item(clip_of, family):
    from leakless.nodes.text.alignment import ROWS
    from leakless.nodes.driver.clip import align_clip

    clip = clip_of(family)
    text = "a hippopotamus beside a xylophone"
    a = align_clip("test", clip, text)
    removed = [p for word in ("hippopotamus", "xylophone") for p in a.find(word).of(ROWS)[:-1]]
    assert removed, "the words should be several tokens in this vocabulary"
    base = encode(clip, text)[0]
    empty = empty_reference(clip, base.shape[1], WORD_ROWS[family][2])
    cond, report = run("LeaklessRedundantTokenMask", clip=clip, text=text, mode="causal rule", items="",
                            classifier="none", threshold=0.5, pooled_output="reference")
    keep = set(range(base.shape[1])) - set(removed)
    assert torch.equal(cond[0][0], dense_keep(base, empty, keep)), report


def test_weights_are_plain_text_for_llm_encoders(clip_of):
    from leakless.nodes.text.alignment import ROWS
    from leakless.nodes.driver.clip import align_clip

    a = align_clip("test", clip_of("z_image"), "a (red:1.5) cat")
    assert "(red:1.5)" in a.words() and {t.weight for t in a.rows.tokens} == {1.0}
    assert a.find("cat").of(ROWS)


def test_hidream_is_inspected_and_traced(clip_of):
    family = "hidream"
    if family not in tiny_models.text_encoders():
        pytest.skip("no HiDream text encoder")
    import nodes

    loader, inputs = tiny_models.text_encoders()[family]
    cls = nodes.NODE_CLASS_MAPPINGS[loader]
    clip = getattr(cls(), cls.FUNCTION)(**inputs)[0]
    table = run("LeaklessTokenInspector", clip=clip, text=TEXT)[0]
    assert "Llama-3.1-8B" in table and "T5-XXL" in table
    (cond, meta), = run("LeaklessTokenTrace", clip=clip, text=TEXT, mode="each word", selection="",
                        include_full_prompt=True, pooled_output="reference")[0]
    assert cond.shape[0] == meta["conditioning_llama3"].shape[0] == 4  # its Llama rows follow: test_hidream_flow.py


def test_inspector_shows_template_tokens(clip_of):
    table = run("LeaklessTokenInspector", clip=clip_of("qwen_image"), text=TEXT)[0]
    rows = table[table.index("\nencoder "):]
    assert "<|im_end|>" in rows and "system" not in rows  # the stripped system part has no rows
