"""Token Trace's and Redundant Token Mask's `empty_prompt` option (issue 13 §3): 'attention-masked' replaces rows
with the empty prompt encoded with ComfyUI's attention mask over its padding, computed here on a separately
loaded CLIP with ComfyUI's own switch turned on; the given CLIP stays as it was; 'as encoded' is the default."""

import pytest
import torch

TEXT = "a red cat and a blue dog"


@pytest.fixture(scope="module")
def sdxl(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    clip = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")[1]
    return nodes, m, clip


def masked_reference(nodes):
    """The empty prompt through a second CLIP whose encoders have ComfyUI's enable_attention_masks on."""
    clip = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")[1]
    assert clip.cond_stage_model is not None
    for encoder in (clip.cond_stage_model.clip_l, clip.cond_stage_model.clip_g):
        encoder.enable_attention_masks = True
    return nodes.CLIPTextEncode().encode(clip, "")[0][0]


def trace(m, clip, **kw):
    return m["LeaklessTokenTrace"].execute(clip=clip, text=TEXT, mode="selection", selection="cat",
                                           include_full_prompt=False, pooled_output="prompt", **kw).args[0]


def test_masked_empty_prompt_rows_and_the_clip_untouched(sdxl):
    nodes, m, clip = sdxl
    plain_empty = nodes.CLIPTextEncode().encode(clip, "")[0][0]
    reference = masked_reference(nodes)
    assert torch.equal(reference[0][:, :2], plain_empty[0][:, :2])  # BOS and EOS see no padding either way
    assert not torch.allclose(reference[0][:, 2:], plain_empty[0][:, 2:])
    prompt = nodes.CLIPTextEncode().encode(clip, TEXT)[0][0][0]
    cat = 3  # BOS a red cat: the row of "cat"
    default = trace(m, clip)[0][0]
    masked = trace(m, clip, empty_prompt="attention-masked")[0][0]
    assert torch.equal(default, trace(m, clip, empty_prompt="as encoded")[0][0])
    for out, empty in ((default, plain_empty[0]), (masked, reference[0])):
        assert torch.equal(out[:, cat], prompt[:, cat])
        others = [i for i in range(77) if i != cat]
        assert torch.equal(out[:, others], empty[:, others])
    assert not clip.cond_stage_model.clip_l.enable_attention_masks
    assert not clip.cond_stage_model.clip_g.enable_attention_masks
    assert torch.equal(nodes.CLIPTextEncode().encode(clip, "")[0][0][0], plain_empty[0])


def test_redundant_token_mask_takes_the_option(sdxl):
    nodes, m, clip = sdxl
    reference = masked_reference(nodes)[0]
    out = m["LeaklessRedundantTokenMask"].execute(clip=clip, text="a zorblaxian on a rock", mode="manual",
                                                  items="zorblaxian: 1", classifier="none", threshold=0.5,
                                                  pooled_output="prompt", empty_prompt="attention-masked").args[0]
    prompt = nodes.CLIPTextEncode().encode(clip, "a zorblaxian on a rock")[0][0][0]
    changed = [i for i in range(77) if not torch.equal(out[0][0][:, i], prompt[:, i])]
    assert changed and all(torch.equal(out[0][0][:, i], reference[:, i]) for i in changed)


def test_an_unknown_option_is_a_clear_error(sdxl):
    _, m, clip = sdxl
    with pytest.raises(ValueError, match=r"Leakless Token Trace: input 'empty_prompt'.*Fix:"):
        trace(m, clip, empty_prompt="zeros")


@pytest.mark.parametrize("family", ["qwen_image", "z_image", "flux2", "flux2_klein", "krea2"])
def test_attention_masked_is_as_encoded_on_the_llm_encoders(comfy_nodes, family):
    """ComfyUI's LLM text encoders (Qwen-Image, Z-Image, FLUX.2 dev and Klein, Krea 2) already mask their padding,
    so the two options give the same rows there (the empty prompt is padded to the prompt's token count)."""
    from test_tiny_text_encoders import family_or_skip

    nodes, _ = comfy_nodes
    m = nodes.NODE_CLASS_MAPPINGS
    loader, inputs = family_or_skip(family)
    node = m[loader]()
    clip = getattr(node, node.FUNCTION)(**inputs)[0]
    encoded = trace(m, clip)[0][0]
    masked = trace(m, clip, empty_prompt="attention-masked")[0][0]
    prompt = nodes.CLIPTextEncode().encode(clip, TEXT)[0][0][0]
    assert not torch.equal(encoded, prompt)  # the empty prompt's rows replaced every row but the cat's
    assert torch.equal(masked, encoded)
