"""A patch acts only on the prompt it was made for (issue 12 §3), through ComfyUI's own loaders, conditioning nodes,
guiders and executor on the tiny models: another prompt of the same padded length is a clear error, the same prompt
encoded again works, the tag survives core conditioning nodes and never changes a sampling; DeLeaker edits only
the entries of its prompt in a combined conditioning, ToMe needs every positive entry to be its own, and Leak
Patch's `conditioning` must be its text's encoding."""

import pytest
import torch

TEXT = "A **cow** and a **horse** in a farm"
CLEAN = "A cow and a horse in a farm"
OTHER = "A dog and a cat in a barn"  # the issue's case: another prompt, the same padded T5 length
SETTINGS = dict(mask_threshold=-1.0, image_threshold=1.0, alpha=1.2, mask_history=0.6, cross_text=True,
                self_text=True, image_image=True, alpha_per_pair=False, overlap="reference")
NOT_OURS = (r"Leakless DeLeaker: input 'entities': the positive prompt the sampler sees is not the one from "
            r"Leakless DeLeaker Encode \('A cow and a horse in a farm'\): it is {}.* Fix: connect Leakless DeLeaker "
            r"Encode's conditioning")
UNTAGGED = r"a conditioning without a Leakless prompt tag \(CLIPTextEncode's or another node's\)"


@pytest.fixture(scope="module")
def m(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    return nodes.NODE_CLASS_MAPPINGS


def node(m, name, **inputs):
    """Any node, V1 (core nodes.py) or V3, called as the executor calls it; returns its outputs."""
    cls = m[name]
    if hasattr(cls, "FUNCTION"):
        return getattr(cls(), cls.FUNCTION)(**inputs)
    return cls.execute(**inputs).args


@pytest.fixture(scope="module")
def flux(m):
    model = node(m, "UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default")[0]
    clip = node(m, "DualCLIPLoader", clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors",
                type="flux")[0]
    cond, spec = node(m, "LeaklessDeLeakerEncode", clip=clip, text=TEXT, entities="")
    return {"model": model, "clip": clip, "cond": cond, "spec": spec}


def plain(m, clip, text):
    return node(m, "CLIPTextEncode", clip=clip, text=text)[0]


def deleak(m, flux):
    return node(m, "LeaklessDeLeaker", model=flux["model"], entities=flux["spec"], **SETTINGS)


def sample(m, model, positive, negative=None, cfg=1.0, batch=1, channels=16, w=128, h=96, steps=3):
    latent = {"samples": torch.zeros(batch, channels, h // 8, w // 8)}
    return node(m, "KSampler", model=model, seed=7, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
                positive=positive, negative=negative or positive, latent_image=latent)[0]["samples"]


def tag_of(conditioning):  # the raw key: the pack ComfyUI loaded is another module object than `leakless`
    return [meta.get("leakless_prompt") for _, meta in conditioning]


def test_tag_survives_core_nodes_and_never_changes_sampling(m, flux):
    cond, spec = flux["cond"], flux["spec"]
    base = plain(m, flux["clip"], CLEAN)
    assert torch.equal(cond[0][0], base[0][0]) and tag_of(cond) == [spec.prompt] and tag_of(base) == [None]
    guided = node(m, "FluxGuidance", conditioning=cond, guidance=3.5)[0]
    ranged = node(m, "ConditioningSetTimestepRange", conditioning=guided, start=0.0, end=1.0)[0]
    area = node(m, "ConditioningSetArea", conditioning=ranged, width=64, height=64, x=0, y=0, strength=1.0)[0]
    masked = node(m, "ConditioningSetMask", conditioning=ranged, mask=torch.ones(1, 12, 16),
                  set_cond_area="default", strength=1.0)[0]
    combined = node(m, "ConditioningCombine", conditioning_1=area, conditioning_2=base)[0]
    assert tag_of(guided) == tag_of(ranged) == tag_of(area) == tag_of(masked) == [spec.prompt]
    assert tag_of(combined) == [spec.prompt, None]
    assert torch.equal(sample(m, flux["model"], cond), sample(m, flux["model"], base))  # the tag is inert
    patched, _ = deleak(m, flux)
    assert torch.equal(sample(m, patched, ranged), sample(m, patched, cond))  # guidance 3.5 is FLUX's default
    assert torch.isfinite(sample(m, patched, masked)).all()


def test_deleaker_refuses_another_prompt_of_the_same_length(m, flux):
    other = plain(m, flux["clip"], OTHER)
    assert other[0][0].shape == flux["cond"][0][0].shape  # the old length check could not tell them apart
    other_encoded, _ = node(m, "LeaklessDeLeakerEncode", clip=flux["clip"], text=OTHER, entities="dog, cat")
    patched, _ = deleak(m, flux)
    with pytest.raises(ValueError, match=NOT_OURS.format(UNTAGGED)):
        sample(m, patched, other)
    with pytest.raises(ValueError, match=NOT_OURS.format(r"'A dog and a cat in a barn' \(encoded by Leakless "
                                                         r"DeLeaker Encode\)\.")):
        sample(m, patched, node(m, "FluxGuidance", conditioning=other_encoded, guidance=3.5)[0])
    with pytest.raises(ValueError, match=NOT_OURS.format(f"2 entries: {UNTAGGED}; {UNTAGGED}")):
        sample(m, patched, node(m, "ConditioningCombine", conditioning_1=other, conditioning_2=other)[0])
    assert torch.isfinite(sample(m, patched, flux["cond"], negative=other, cfg=2.0)).all()  # negatives: unchecked


def test_deleaker_accepts_the_same_prompt_encoded_again(m, flux):
    again, spec = node(m, "LeaklessDeLeakerEncode", clip=flux["clip"], text=CLEAN, entities="cow, horse")
    assert tag_of(again) == [flux["spec"].prompt] and spec.positions == flux["spec"].positions
    patched, run = deleak(m, flux)
    first = sample(m, patched, flux["cond"])
    assert torch.equal(sample(m, patched, again), first) and bool(masks_of(run).any(dim=-1).all())


def masks_of(results):
    """The masks of the last sampling run with a DeLeaker model (its MASKS output)."""
    return results.last.value.masks


def _spy(calls):
    def spy(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        calls.append((list(transformer_options["cond_or_uncond"]), c_crossattn.clone(), out.clone()))
        return out

    return spy


def test_deleaker_edits_only_its_prompts_entries_of_a_combined_conditioning(m, flux):
    """ConditioningCombine of DeLeaker Encode's conditioning and another prompt of the same length: both entries
    run in one model call; DeLeaker edits the rows of its own entry and leaves the other's exactly as they are."""
    import comfy.patcher_extension as ext

    other = plain(m, flux["clip"], OTHER)
    outputs = {}
    for name in ("plain", "patched"):
        model = flux["model"].clone() if name == "plain" else deleak(m, flux)[0]
        calls = []
        model.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, "test_spy", _spy(calls))
        for first, second in ((flux["cond"], other), (other, flux["cond"])):
            calls.clear()
            sample(m, model, node(m, "ConditioningCombine", conditioning_1=first, conditioning_2=second)[0], steps=1)
            (flags, context, out), = calls  # cfg 1: one call, both positive entries batched
            assert flags == [0, 0]
            ours = 0 if torch.equal(context[0], flux["cond"][0][0][0]) else 1
            assert torch.equal(context[1 - ours], other[0][0][0])
            outputs.setdefault(name, []).append((out[ours], out[1 - ours]))
    for (plain_ours, plain_other), (patched_ours, patched_other) in zip(outputs["plain"], outputs["patched"],
                                                                        strict=True):
        assert torch.equal(patched_other, plain_other)
        assert not torch.equal(patched_ours, plain_ours)
    patched, run = deleak(m, flux)
    sample(m, patched, node(m, "ConditioningCombine", conditioning_1=other, conditioning_2=flux["cond"])[0])
    assert masks_of(run).shape[0] == 1  # masks for its own entry's row only


def test_deleaker_with_a_batch_of_prompts(m, flux):
    """Token Trace's batched conditioning of the same prompt (three subsets) carries the prompt's tag: DeLeaker
    makes masks for every row. The same batch of another prompt is refused."""
    trace, _, count = node(m, "LeaklessTokenTrace", clip=flux["clip"], text=CLEAN, mode="selection",
                           selection="cow\nhorse", include_full_prompt=True, pooled_output="reference")
    assert count == 3 and trace[0][0].shape[0] == 3 and tag_of(trace) == [flux["spec"].prompt]
    patched, run = deleak(m, flux)
    assert torch.isfinite(sample(m, patched, trace, batch=3)).all() and masks_of(run).shape[0] == 3
    sample(m, patched, flux["cond"], negative=plain(m, flux["clip"], "blurry"), cfg=2.0, batch=2)
    assert masks_of(run).shape[0] == 2
    other_trace = node(m, "LeaklessTokenTrace", clip=flux["clip"], text=OTHER, mode="each word", selection="",
                       include_full_prompt=True, pooled_output="reference")[0]
    with pytest.raises(ValueError, match=NOT_OURS.format(r"'A dog and a cat in a barn' \(encoded by Leakless Token "
                                                         r"Trace\)")):
        sample(m, patched, other_trace, batch=other_trace[0][0].shape[0])


def test_the_issue_graph_through_the_executor(comfy_nodes):
    """The reported case as a workflow: DeLeaker with the entities of 'A cow and a horse in a farm', sampled by
    SamplerCustomAdvanced with 'A dog and a cat in a barn' as the positive, stops with the error; a second DeLeaker
    Encode of the same prompt as the positive runs."""
    import comfy_env
    from workflows.examples import EXAMPLES, shrink

    g = shrink(EXAMPLES["flux_deleaker"](), size=64)
    g["70"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["11", 0], "text": OTHER}}
    g["26"]["inputs"]["conditioning"] = ["70", 0]
    with pytest.raises(comfy_env.ExecutionFailed) as failed:
        comfy_env.run_prompt(g)
    error = failed.value.args[0]
    assert error["node_type"] == "SamplerCustomAdvanced"
    assert "Leakless DeLeaker: input 'entities'" in error["exception_message"]
    assert "Fix: connect Leakless DeLeaker Encode's conditioning" in error["exception_message"]
    g["70"] = {"class_type": "LeaklessDeLeakerEncode", "inputs": {"clip": ["11", 0], "text": CLEAN,
                                                                  "entities": "cow, horse"}}
    assert comfy_env.run_prompt(g)["9"]["images"]


@pytest.mark.parametrize("entities_family,positive_family", [("flux2_klein", "flux2"), ("flux2", "flux2_klein")])
def test_the_same_text_from_another_text_encoder_names_both(m, entities_family, positive_family):
    """FLUX.2 dev's model reads the prompts of FLUX.2 dev's and Klein's text encoders: entities from one and the
    positive prompt, the same text, from the other stop the sampler with an error that says the text encoders differ,
    names both, and which one each model reads (it said the text was not itself)."""
    import tiny_models
    from test_tiny_diffusion_models import LATENTS
    from test_tiny_text_encoders import family_or_skip

    clips = {}
    for family in (entities_family, positive_family):
        loader, inputs = family_or_skip(family)
        clips[family] = node(m, loader, **inputs)[0]
    model = node(m, "UNETLoader", unet_name=tiny_models.DIFFUSION_MODELS["flux2"][2], weight_dtype="default")[0]
    _, spec = node(m, "LeaklessDeLeakerEncode", clip=clips[entities_family], text=TEXT, entities="")
    positive, _ = node(m, "LeaklessDeLeakerEncode", clip=clips[positive_family], text=TEXT, entities="")
    patched, _ = node(m, "LeaklessDeLeaker", model=model, entities=spec, **SETTINGS)
    names = {"flux2": r"FLUX\.2 dev's text encoder \(Mistral-3-24B\)",
             "flux2_klein": r"FLUX\.2 Klein's text encoder \(Qwen3-4B\)"}
    with pytest.raises(ValueError, match=rf"same text, encoded by another text encoder: the positive prompt by "
                       rf"{names[positive_family]}, the one from Leakless DeLeaker Encode by {names[entities_family]}"
                       r"; .* Fix: .*a FLUX\.2 dev model reads"):
        node(m, "KSampler", model=patched, seed=7, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
             positive=positive, negative=positive, latent_image={"samples": torch.zeros(1, *LATENTS["flux2"])})


def test_leak_patch_conditioning_must_be_its_texts_encoding(m, flux):
    clip = flux["clip"]
    patch = dict(clip=clip, text=CLEAN, items="horse")
    with pytest.raises(ValueError, match=r"^Leakless Leak Patch: input 'conditioning': it is not this text's "
                       r"encoding: its rows differ from the encoding of 'A cow and a horse in a farm' with this CLIP\."
                       r" Fix: "):
        node(m, "LeaklessLeakPatch", conditioning=plain(m, clip, OTHER), **patch)
    other_encoded, _ = node(m, "LeaklessDeLeakerEncode", clip=clip, text=OTHER, entities="dog, cat")
    with pytest.raises(ValueError, match=r"it was encoded from 'A dog and a cat in a barn' \(encoded by Leakless "
                       r"DeLeaker Encode\), not from 'A cow and a horse in a farm'"):
        node(m, "LeaklessLeakPatch", conditioning=other_encoded, **patch)
    combined = node(m, "ConditioningCombine", conditioning_1=flux["cond"], conditioning_2=plain(m, clip, OTHER))[0]
    with pytest.raises(ValueError, match="input 'conditioning': entry 2 of 2 is not this text's encoding"):
        node(m, "LeaklessLeakPatch", conditioning=combined, **patch)

    alone = node(m, "LeaklessLeakPatch", **patch)[0]
    assert tag_of(alone) == [flux["spec"].prompt]  # its own encoding is tagged too
    guided_plain = node(m, "FluxGuidance", conditioning=plain(m, clip, CLEAN), guidance=3.5)[0]
    from_plain = node(m, "LeaklessLeakPatch", conditioning=guided_plain, **patch)[0]
    assert torch.equal(from_plain[0][0], alone[0][0]) and tag_of(from_plain) == [None]  # its keys are kept
    from_encode = node(m, "LeaklessLeakPatch", conditioning=flux["cond"], **patch)[0]
    assert torch.equal(from_encode[0][0], alone[0][0]) and tag_of(from_encode) == [flux["spec"].prompt]
    patched, run = deleak(m, flux)  # DeLeaker Encode -> Leak Patch -> sampler, as flux_leak_patch_deleaker
    assert torch.isfinite(sample(m, patched, from_encode)).all() and masks_of(run) is not None
    trace = node(m, "LeaklessTokenTrace", clip=clip, text=CLEAN, mode="selection", selection="cow\nhorse",
                 include_full_prompt=False, pooled_output="reference")[0]
    assert node(m, "LeaklessLeakPatch", conditioning=trace, **patch)[0][0][0].shape[0] == 2  # a batch


def test_leak_patch_sdxl_every_short_prompt_has_77_rows(m):
    _, clip, _ = node(m, "CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors")
    text = "bats hanging in a cave next to a baseball glove"
    with pytest.raises(ValueError, match="input 'conditioning': it is not this text's encoding: its rows differ"):
        node(m, "LeaklessLeakPatch", clip=clip, text=text, items="bats",
             conditioning=plain(m, clip, "a glove hanging in a barn next to a baseball bat"))
    masked = node(m, "LeaklessRedundantTokenMask", clip=clip, text=text, mode="causal rule", items="",
                  classifier="none", threshold=0.5, pooled_output="reference")[0]
    assert node(m, "LeaklessLeakPatch", clip=clip, text=text, items="bats", conditioning=masked)[0]


TOME = dict(noun_weight=1.1, attribute_weight=1.2, end_token_substitution=0.0, clean_prompt="")
TOME_TEXT = "a cat wearing sunglasses and a dog wearing a hat"
BIND = dict(steps_fraction=0.25, entropy_iterations=1, semantic_iterations=1, semantic_lr=1e4, entropy_step=3.0,
            pose_prior=False)


def test_tome_acts_only_on_its_own_prompt(m):
    model, clip, _ = node(m, "CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors")
    cond, binding = node(m, "LeaklessToMeEncode", clip=clip, text=TOME_TEXT,
                         groups="cat: wearing sunglasses; dog: wearing a hat", **TOME)
    patched = node(m, "LeaklessToMeSemanticBinding", model=model, binding=binding, **BIND)[0]
    negative = plain(m, clip, "low res")

    def go(positive):
        return sample(m, patched, positive, negative=negative, cfg=5.0, channels=4, w=64, h=64, steps=4)

    not_ours = (r"Leakless ToMe Semantic Binding: input 'binding': the positive prompt the sampler sees is not the "
                r"one from Leakless ToMe Encode \('a cat wearing sunglasses and a dog wearing a hat'\): it is {}.* "
                r"Fix: connect Leakless ToMe Encode's conditioning")
    other, _ = node(m, "LeaklessToMeEncode", clip=clip, text="a dog wearing sunglasses and a cat wearing a hat",
                    groups="dog: wearing sunglasses; cat: wearing a hat", **TOME)
    with pytest.raises(ValueError, match=not_ours.format(r"'a dog wearing sunglasses and a cat wearing a hat' "
                                                         r"\(encoded by Leakless ToMe Encode\)\.")):
        go(other)
    with pytest.raises(ValueError, match=not_ours.format(r"2 entries: 'a cat .*; " + UNTAGGED + r"\. Every entry "
                                                         "must be, since all of them are edited")):
        go(node(m, "ConditioningCombine", conditioning_1=cond, conditioning_2=plain(m, clip, TOME_TEXT))[0])
    again, _ = node(m, "LeaklessToMeEncode", clip=clip, text=TOME_TEXT, groups="cat: wearing sunglasses; dog: "
                    "wearing a hat", **TOME)
    first = go(cond)
    assert torch.equal(go(again), first)  # the same prompt encoded by a second node
    ranged = node(m, "ConditioningSetTimestepRange", conditioning=cond, start=0.0, end=1.0)[0]
    assert torch.equal(go(ranged), first)
