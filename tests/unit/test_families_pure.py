"""The family registry (pure): how a CLIP's tokenizer is told apart, and that every entry is consistent."""

import pytest


@pytest.fixture(scope="module")
def families(leakless):
    from leakless.nodes.registry import families

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
    # an LLM tokenizer built on SD1Tokenizer that Leakless does not know is not SD1.5
    assert families.family_of_tokenizer(_tokenizer("Gemma3Tokenizer", "SD1Tokenizer"), ["gemma3_4b"]) is None
    assert families.family_of_tokenizer(_tokenizer("LuminaTokenizer", "SD1Tokenizer"), ["gemma2_2b"]).id == "lumina2"
    # HunyuanImage adds its ByT5 glyph encoder for quoted text only: both key sets are HunyuanImage, neither Qwen-Image
    hunyuan = _tokenizer("HunyuanImageTokenizer", "QwenImageTokenizer", "SD1Tokenizer")
    assert families.family_of_tokenizer(hunyuan, ["qwen25_7b"]).id == "hunyuan_image"
    assert families.family_of_tokenizer(hunyuan, ["qwen25_7b", "byt5"]).id == "hunyuan_image"
    assert families.family_of_tokenizer(hunyuan, ["byt5"]) is None
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


