"""The Token Inspector's outputs (the text table and the ui payload in the history entry) grow linearly with the
prompt and have a stated cap: a prompt that is one long word used to repeat that word on every token's row."""

import json

import pytest
from workflows import graphs

DUAL_FLUX = {"11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                            "clip_name2": "clip_l.safetensors", "type": "flux"}}}
SDXL = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}}
EMOJI_CJK = ("\U0001f600\u6f22\u5b57" * 7000)[:20_000]  # unspaced: one word, about 2 CLIP tokens a character


def _run(graph):
    import comfy_env

    return comfy_env.run_prompt(graph)["100"]


@pytest.mark.parametrize("loader, link, text", [
    (DUAL_FLUX, ["11", 0], EMOJI_CJK),
    (SDXL, ["4", 1], EMOJI_CJK),
    (DUAL_FLUX, ["11", 0], "(" * 20_000),
    (SDXL, ["4", 1], "a " * 10_000),
], ids=["flux-emoji", "sdxl-emoji", "flux-parens", "sdxl-spaced"])
def test_inspector_outputs_are_linear_in_the_prompt(comfy_nodes, loader, link, text):
    out = _run(graphs.with_token_inspector(loader, link, text))
    table, payload = out["text"][0], out["leakless_tokens"][0]
    rows = [r for r in table.splitlines() if r]
    assert max(len(r) for r in rows) < 100  # the word column is cut to 24 characters
    # Each row holds up to 4 encoders' worth of bytes per character; measured at most ~700 (SDXL, 2 CLIP encoders).
    assert len(table.encode()) < 800 * len(text)
    assert len(json.dumps(payload, ensure_ascii=False).encode()) < 150 * len(text)
    assert len(payload["words"]) == len(text.split())


def test_inspector_refuses_a_prompt_over_the_limit(comfy_nodes):
    nodes, _ = comfy_nodes
    clip = nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]
    cls = nodes.NODE_CLASS_MAPPINGS["LeaklessTokenInspector"]
    with pytest.raises(ValueError, match=r"input 'text': the prompt is 20001 characters; .* at most 20000"):
        cls.execute(clip=clip, text="a" * 20_001)
    with pytest.raises(ValueError, match=r"input 'text': the prompt's parentheses nest too deeply"):
        cls.execute(clip=clip, text="(" * 2000 + "cat" + ")" * 2000)


def test_inspector_payload_names_each_word_once(comfy_nodes):
    out = _run(graphs.with_token_inspector(SDXL, ["4", 1], "a (red:1.2) cat, a red cat"))
    payload = out["leakless_tokens"][0]
    assert [w["word"] for w in payload["words"]] == ["a", "red", "cat,", "a", "red", "cat"]
    clip_l = next(e for e in payload["encoders"] if e["key"] == "l")
    words = [payload["words"][i]["word"] if i is not None else None for i in clip_l["word"]]
    assert words[0] is None and words[-1] is None  # BOS, EOS
    assert clip_l["weight"][words.index("red")] == pytest.approx(1.2)
    assert payload["words"][1]["tokens"] == {"g": 1, "l": 1} and payload["words"][2]["tokens"]["l"] == 2
