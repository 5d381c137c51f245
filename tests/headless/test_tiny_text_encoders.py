"""The tiny text encoders of the newer families (issue 13 §4) load through ComfyUI's standard loaders, encode in a
real headless graph to the shapes ComfyUI's own encoders give, and tokenize with the tokenizers ComfyUI ships (the
ids equal those of the Hugging Face tokenizer read from ComfyUI's tokenizer files, or of the tekken vocabulary)."""

import base64
import functools
import json

import pytest

import comfy_env
import tiny_models

TEXT = "a red cat"
# family: (rows for TEXT, rows for "", width, pooled_output, other conditioning keys), measured on both versions
# (/tmp/facts/families.md). Widths are the tiny ones: 8 per LLM layer read, CLIP-L+G 32+32, T5 64 (HiDream's 32).
# Qwen-Image and Krea 2 strip the 34-token system prefix; Klein pads to 512; FLUX.2 stacks layers 10/20/30, Klein
# 9/18/27, Krea 2 twelve layers; SD3 pads the CLIP rows to 4096; HiDream's Llama rows are every layer's output.
EXPECTED = {
    "qwen_image": (8, 5, 8, None, {}),
    "z_image": (11, 8, 8, None, {"attention_mask": [1, None]}),
    "flux2": (36, 33, 3 * 8, None, {"attention_mask": [1, None]}),
    "flux2_klein": (512, 512, 3 * 8, None, {"attention_mask": [1, 512]}),
    "krea2": (8, 5, 12 * 8, None, {}),
    "sd3": (77, 77, 4096, [1, 64], {}),
    "sd3_t5": (77, 77, 64, [1, 2048], {}),
    "hidream": (128, 128, 32, [1, 64], {"conditioning_llama3": [1, 32, 128, 8]}),
}
# The templates of ComfyUI's LLM tokenizers (qwen_image.py, z_image.py, flux.py KleinTokenizer, krea2.py).
QWEN_IMAGE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                       "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                       "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATES = {"qwen_image": QWEN_IMAGE_TEMPLATE, "krea2": QWEN_IMAGE_TEMPLATE,
             "z_image": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
             "flux2_klein": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"}
# The tokenizer files ComfyUI ships, per tokenize() key, read here by Hugging Face's own tokenizer classes.
REFERENCE_TOKENIZER = {"qwen25_7b": "text_encoders/qwen25_tokenizer", "qwen3_4b": "text_encoders/qwen25_tokenizer",
                       "qwen3vl_4b": "text_encoders/qwen25_tokenizer", "llama": "text_encoders/llama_tokenizer",
                       "t5xxl": "text_encoders/t5_tokenizer", "l": "sd1_tokenizer", "g": "sd1_tokenizer"}
# "a cat" in each real vocabulary (Qwen2.5, Llama 3, T5, CLIP), as the HF tokenizers give it.
KNOWN_IDS = {"text_encoders/qwen25_tokenizer": [64, 8251], "text_encoders/llama_tokenizer": [128000, 64, 8415],
             "text_encoders/t5_tokenizer": [3, 9, 1712, 1], "sd1_tokenizer": [49406, 320, 2368, 49407]}


def reads_tekken_through_transformers():
    """0.3.75 builds the Mistral tokenizer with transformers' MistralConverter, whose signature transformers 5
    changed (0.33.0 has its own BPE, `from_tekken_json`)."""
    import comfy.text_encoders.flux

    return not hasattr(comfy.text_encoders.flux, "from_tekken_json")


def llama3_through_transformers():
    """0.3.75 tokenizes Llama 3 with transformers' LlamaTokenizerFast, which in transformers 5 adds SentencePiece
    prefix spaces to Llama 3's byte-level BPE: "a red cat" gives [128000, 1636, 4719], not [128000, 64, 2579, 8415]
    (0.33.0 has its own BPE)."""
    import comfy.text_encoders.hunyuan_video

    return comfy.text_encoders.hunyuan_video.LlamaTokenizerFast.__module__.startswith("transformers")


def family_or_skip(family):
    available = tiny_models.text_encoders()
    if family not in available:
        if family == "flux2" and hasattr(tiny_models.te_module("flux"), "flux2_te"):
            pytest.fail(f"no tekken vocabulary at {tiny_models.tekken_path()}: run `make env` "
                        "(tests/harness/requirements-data.txt)")
        pytest.skip(f"ComfyUI {comfy_env.COMFY_NAME} has no {family} text encoder")
    if family == "flux2" and reads_tekken_through_transformers():
        pytest.skip("FLUX.2 dev's tokenizer cannot be built on this ComfyUI with transformers 5: "
                    "test_flux2_dev_fails_to_load_where_comfyui_needs_old_transformers")
    return available[family]


def encode_graph(loader, inputs, texts, tokenize):
    """The loader, CLIPTextEncode of each text, each conditioning described (and `tokenize` tokenized by the CLIP)."""
    graph = {"1": {"class_type": loader, "inputs": inputs}}
    for i, text in enumerate(texts):
        graph[str(10 + i)] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": text}}
        graph[str(20 + i)] = {"class_type": "TinyTestConditioningInfo",
                              "inputs": {"conditioning": [str(10 + i), 0], "clip": ["1", 0], "text": tokenize}}
    return graph


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread (on a busy 2-core machine two threads made each 8-wide linear ~7 ms, not 0.05 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(comfy_nodes):
    """One headless run per family (loading an encoder is most of the cost: FLUX.2 dev builds its BPE)."""
    runs = {}

    def run_family(family):
        if family not in runs:
            loader, inputs = family_or_skip(family)
            runs[family] = comfy_env.run_prompt(encode_graph(loader, inputs, [TEXT, ""], "a cat"))
        return runs[family]

    return run_family


@pytest.mark.parametrize("family", sorted(tiny_models.TEXT_ENCODERS))
def test_loads_and_encodes_in_a_graph(run, family):
    outputs = run(family)
    rows, empty_rows, width, pooled, extra = EXPECTED[family]
    for node_id, n in (("20", rows), ("21", empty_rows)):
        (info,) = outputs[node_id]["conditioning"]
        assert info.pop("cond") == [1, n, width]
        assert info.pop("pooled_output") == pooled
        expected_extra = {k: [n if d is None else d for d in v] for k, v in extra.items()}
        assert info == expected_extra


@functools.cache
def hf_tokenizer(rel):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(comfy_env.COMFY_DIR / "comfy" / rel))


@pytest.mark.parametrize("family", sorted(set(tiny_models.TEXT_ENCODERS) - {"flux2"}))
def test_tokenizer_is_the_one_comfyui_ships(run, family):
    """The ids of "a cat" in its template (the string ComfyUI's tokenizer class formats) equal the HF tokenizer's."""
    (tokens,) = run(family)["20"]["tokens"]
    for key, ids in tokens.items():
        template = TEMPLATES.get(family)
        reference = hf_tokenizer(REFERENCE_TOKENIZER[key])
        assert reference("a cat")["input_ids"] == KNOWN_IDS[REFERENCE_TOKENIZER[key]]
        expected = reference(template.format("a cat") if template else "a cat")["input_ids"]
        if key == "llama" and llama3_through_transformers():  # pinned, so an environment that fixes it shows up
            assert ids[:len(expected)] != expected
            continue
        assert ids[:len(expected)] == expected, key
        assert len(set(ids[len(expected):])) <= 1, key  # then padding only


def test_flux2_dev_tokenizer_is_the_tekken_vocabulary(run):
    """FLUX.2 dev reads its tokenizer from the file: BOS, [SYSTEM_PROMPT] … [/SYSTEM_PROMPT][INST], the prompt, [/INST];
    prompt ids are the tekken ranks of its pieces offset by the 1000 special tokens."""
    ((key, ids),) = run("flux2")["20"]["tokens"][0].items()
    with open(tiny_models.tekken_path(), encoding="utf-8") as f:
        vocab = {base64.b64decode(v["token_bytes"]): v["rank"] for v in json.load(f)["vocab"]}
    assert ids[:2] == [1, 17] and ids[-5:] == [18, 3, vocab[b"a"] + 1000, vocab[b" cat"] + 1000, 4]


def test_flux2_dev_fails_to_load_where_comfyui_needs_old_transformers(comfy_nodes):
    """On 0.3.75 any FLUX.2 dev text encoder fails to load with transformers 5 (MistralConverter's new signature):
    pinned here, so an environment where it loads shows up (then test FLUX.2 dev there too)."""
    if "flux2" not in tiny_models.text_encoders() or not reads_tekken_through_transformers():
        pytest.skip("this ComfyUI reads the tekken vocabulary itself")
    loader, inputs = tiny_models.TEXT_ENCODERS["flux2"]
    with pytest.raises(comfy_env.ExecutionFailed, match="MistralConverter|pixtral"):
        comfy_env.run_prompt(encode_graph(loader, inputs, [TEXT], TEXT))
