"""The family registry (pure): how a CLIP's tokenizer is told apart, and that every entry is consistent."""

import pytest


@pytest.fixture(scope="module")
def families(leakless):
    from leakless.nodes import families

    return families


def _tokenizer(*names):
    """An object whose class has base classes named `names` (most derived first), as ComfyUI's tokenizers do."""
    cls = object
    for name in reversed(names):
        cls = type(name, (cls,), {})
    return cls()


def test_most_derived_class_with_the_same_encoders_wins(families):
    assert families.family_of_tokenizer(_tokenizer("QwenImageTokenizer", "SD1Tokenizer"), ["qwen25_7b"]).id == \
        "qwen_image"
    assert families.family_of_tokenizer(_tokenizer("MyPackTokenizer", "SDXLTokenizer"), ["l", "g"]).id == "sdxl"
    # an LLM tokenizer built on SD1Tokenizer that Leakless does not know (Lumina 2's Gemma) is not SD1.5
    assert families.family_of_tokenizer(_tokenizer("LuminaTokenizer", "SD1Tokenizer"), ["gemma2_2b"]) is None
    # Z-Image and Klein share the Qwen3 key: the tokenizer class tells them apart
    assert families.family_of_tokenizer(_tokenizer("KleinTokenizer", "SD1Tokenizer"), ["qwen3_4b"]).id == \
        "flux2_klein"
    assert families.family_of_tokenizer(_tokenizer("ZImageTokenizer", "SD1Tokenizer"), ["qwen3_4b"]).id == "z_image"


def test_every_entry_is_consistent(families):
    ids = [f.id for f in families.FAMILIES]
    assert len(ids) == len(set(ids))
    for f in families.FAMILIES:
        assert set(f.row_encoders) <= set(f.encoders), f.id
        assert all(k in families.ENCODER_NAMES for k in f.encoders), f.id
        assert all(encoder in f.encoders for _, encoder in f.extra_rows), f.id
        assert f.loaders and all(node.endswith("Loader") or node.endswith("LoaderSimple") for node, _ in f.loaders)
        assert not f.tokenizer or ":" in f.tokenizer
        payload = f.payload()
        assert payload["id"] == f.id and payload["weights"] == (not f.chat_template)


def test_names_lists_the_families_a_method_supports(families):
    assert families.names(lambda f: f.tome) == "SDXL and SD1.5"
    assert families.names(lambda f: not f.joint) == "SDXL and SD1.5"


@pytest.mark.parametrize("text", ["a red cat", "  two  spaces\nand a newline",
                                  "\U0001f600 emoji \u6f22\u5b57 caf\u00e9"])
def test_byte_level_offsets_equal_the_tokenizers_own(comfy, leakless, text):
    """The offsets Leakless derives from a byte-level vocabulary (for tokenizers without offset support, like
    ComfyUI's own tekken BPE) equal those Hugging Face's fast Qwen tokenizer reports."""
    import comfy.text_encoders.z_image

    from leakless.nodes.alignment import _byte_level_offsets, sub_tokenizer

    sub = sub_tokenizer(comfy.text_encoders.z_image.ZImageTokenizer(), "qwen3_4b")
    enc = sub.tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    assert _byte_level_offsets(sub, text, ids) == offsets
    assert _byte_level_offsets(sub, text + "x", ids) is None  # the bytes must add up to the text
