"""Follow the Flow nodes on tiny random-weight encoders loaded by the standard loaders, checked against
independent references: the empty prompt encoded by ComfyUI itself, dense row selection written here."""

import json
import re

import pytest
import torch
from workflows import graphs

FLUX, SDXL = "flux", "sdxl"


@pytest.fixture(scope="module")
def clips(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    return {
        FLUX: nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0],
        SDXL: nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")[1],
    }


@pytest.fixture(scope="module")
def node(comfy_nodes, leakless):
    nodes, _ = comfy_nodes
    return lambda node_id, **kw: nodes.NODE_CLASS_MAPPINGS[node_id].execute(**kw).args


def clip_text_encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def reference_empty(clip, family, length):
    """The empty prompt at `length` rows, built independently of Leakless: CLIPTextEncode("") for one CLIP chunk
    or short T5; CLIP chunks are encoded independently, so k chunks tile it; longer T5 uses ComfyUI's own
    t5xxl_min_length tokenizer option."""
    base = clip_text_encode(clip, "")[0]
    if base[0].shape[1] == length:
        return base
    if family == SDXL:
        return [base[0].repeat(1, length // 77, 1), base[1]]
    tokens = clip.tokenize("", tokenizer_options={"t5xxl_min_length": length})
    return clip.encode_from_tokens_scheduled(tokens)[0]


def dense_keep(cond, empty, keep):
    rows = [cond[:, i] if i in keep else empty[:, i] for i in range(cond.shape[1])]
    return torch.stack(rows, dim=1)


LONG = ", ".join(f"a (red:1.1) cat number {i}" for i in range(40))


@pytest.mark.parametrize("family", [FLUX, SDXL])
@pytest.mark.parametrize("text", ["bats flying at night, a (baseball:1.2) bat", LONG], ids=["short", "long"])
def test_trace_each_word_matches_dense_reference(clips, node, family, text):
    from leakless.nodes.text.alignment import align
    from leakless.nodes.methods.flow import lexical_items

    clip = clips[family]
    base_cond, base_meta = clip_text_encode(clip, text)[0]
    before = base_cond.clone()
    cond, labels, count = node("LeaklessTokenTrace", clip=clip, text=text, mode="each word", selection="",
                               include_full_prompt=True, pooled_output="reference")
    (batched, meta), = cond
    key = "t5xxl" if family == FLUX else "l"
    items = lexical_items(align(text, clip.tokenizer), key)
    assert count == len(items) + 1 == batched.shape[0] == meta["pooled_output"].shape[0]
    assert batched.shape[1:] == base_cond.shape[1:]
    empty, empty_meta = reference_empty(clip, family, base_cond.shape[1])
    assert torch.equal(batched[:1], base_cond)
    for i, item in enumerate(items, start=1):
        assert torch.equal(batched[i:i + 1], dense_keep(base_cond, empty, set(item.positions)))
        expected_pooled = empty_meta["pooled_output"] if family == SDXL else base_meta["pooled_output"]
        assert torch.equal(meta["pooled_output"][i:i + 1], expected_pooled)
    assert labels.splitlines()[0] == "full prompt" and len(labels.splitlines()) == count
    assert torch.equal(base_cond, before)


@pytest.mark.parametrize("family", [FLUX, SDXL])
def test_selecting_every_token_reproduces_clip_text_encode(clips, node, family):
    clip = clips[family]
    text = "a cow and a (horse:1.3) in a farm"
    base_cond, base_meta = clip_text_encode(clip, text)[0]
    last = base_cond.shape[1] - 1
    (cond, meta), = node("LeaklessTokenTrace", clip=clip, text=text, mode="selection", selection=f"0-{last}",
                         include_full_prompt=False, pooled_output="reference")[0]
    assert torch.equal(cond, base_cond)
    assert torch.equal(meta["pooled_output"], base_meta["pooled_output"])


@pytest.mark.parametrize("family", [FLUX, SDXL])
def test_trace_selection_modes_and_pooled_options(clips, node, family):
    clip = clips[family]
    text = "a cat and a cat and a dog"
    base_cond, base_meta = clip_text_encode(clip, text)[0]
    empty, empty_meta = reference_empty(clip, family, base_cond.shape[1])
    cond, labels, count = node("LeaklessTokenTrace", clip=clip, text=text, mode="all but selection",
                               selection="cat#2\ndog, cat", include_full_prompt=False, pooled_output="prompt")
    (batched, meta), = cond
    from leakless.nodes.text.alignment import align

    a = align(text, clip.tokenizer)
    key = "t5xxl" if family == FLUX else "l"
    cat2 = set(a.find("cat", 2).positions[key])
    dog_cat = set(a.find("dog").positions[key]) | set(a.find("cat").positions[key])
    everything = set(range(base_cond.shape[1]))
    assert count == 2 and labels.splitlines()[0].startswith("without")
    assert torch.equal(batched[0:1], dense_keep(base_cond, empty, everything - cat2))
    assert torch.equal(batched[1:2], dense_keep(base_cond, empty, everything - dog_cat))
    assert torch.equal(meta["pooled_output"], base_meta["pooled_output"].repeat(2, 1))
    (_, meta_e), = node("LeaklessTokenTrace", clip=clip, text=text, mode="each token", selection="",
                        include_full_prompt=False, pooled_output="empty prompt")[0]
    assert torch.equal(meta_e["pooled_output"][:1], empty_meta["pooled_output"])


@pytest.mark.parametrize("family", [FLUX, SDXL])
@pytest.mark.parametrize("text,item", [("a bat flying over a baseball stadium", "bat"),
                                       ("A standing zebra to the right of a bus station", "standing zebra"),
                                       (LONG + ", a final bat", "bat")], ids=["bat", "zebra", "multi-chunk"])
def test_leak_patch_pastes_the_isolated_rows(clips, node, family, text, item):
    from leakless.nodes.text.alignment import align

    clip = clips[family]
    base = clip_text_encode(clip, text)
    base_cond = base[0][0]
    before = base_cond.clone()
    (cond, meta), = node("LeaklessLeakPatch", clip=clip, text=text, items=item, conditioning=base)[0]
    key = "t5xxl" if family == FLUX else "l"
    target = align(text, clip.tokenizer).find(item).positions[key]
    isolated = clip_text_encode(clip, item)[0][0]
    offset = 0 if family == FLUX else 1  # CLIP rows start after BOS
    source = list(range(offset, offset + len(target)))
    assert cond.shape == base_cond.shape
    assert torch.equal(cond[:, target], isolated[:, source])
    others = [i for i in range(cond.shape[1]) if i not in target]
    assert torch.equal(cond[:, others], base_cond[:, others])
    assert meta.keys() == base[0][1].keys() and meta is not base[0][1]
    assert torch.equal(base_cond, before)  # the input conditioning is untouched


def test_leak_patch_keeps_the_weight_the_item_has_in_the_prompt(clips, node):
    from leakless.nodes.text.alignment import align

    clip = clips[FLUX]
    text = "a (bat:1.3) near a baseball"
    (cond, _), = node("LeaklessLeakPatch", clip=clip, text=text, items="bat")[0]
    (row,) = align(text, clip.tokenizer).find("bat").positions["t5xxl"]
    weighted = clip.encode_from_tokens_scheduled(
        {k: [[(t, 1.3 if w == 1 and t not in (0, 1, 49406, 49407) else w) for t, w in chunk] for chunk in v]
         for k, v in clip.tokenize("bat").items()})[0][0]
    assert torch.equal(cond[:, row], weighted[:, 0])
    unweighted = clip_text_encode(clip, "bat")[0][0]
    assert not torch.equal(cond[:, row], unweighted[:, 0])


def test_leak_patch_keeps_other_conditioning_keys(clips, node):
    nodes_mod = __import__("nodes")
    clip = clips[FLUX]
    base = clip_text_encode(clip, "a bat and a baseball")
    guided = nodes_mod.NODE_CLASS_MAPPINGS["FluxGuidance"].execute(conditioning=base, guidance=2.5).args[0]
    (cond, meta), = node("LeaklessLeakPatch", clip=clip, text="a bat and a baseball", items="bat",
                         conditioning=guided)[0]
    assert meta["guidance"] == 2.5


@pytest.mark.parametrize("family", [FLUX, SDXL])
def test_redundant_manual_removes_only_the_named_tokens(clips, node, family):
    from leakless.nodes.text.alignment import align

    clip = clips[family]
    text = "a pelican near the supercalifragilistic bridge"
    a = align(text, clip.tokenizer)
    key = "t5xxl" if family == FLUX else "l"
    long_word = a.find("supercalifragilistic").positions[key]
    keep_text = a.encoders[key].tokens[long_word[1]].text.replace("\u2581", "").replace("</w>", "")
    base_cond, base_meta = clip_text_encode(clip, text)[0]
    empty, empty_meta = reference_empty(clip, family, base_cond.shape[1])
    ((cond, meta),), report = node("LeaklessRedundantTokenMask", clip=clip, text=text, mode="manual",
                                items=f"supercalifragilistic: {keep_text}", classifier="none", threshold=0.5,
                                pooled_output="reference")
    removed = set(long_word) - {long_word[1]}
    assert torch.equal(cond, dense_keep(base_cond, empty, set(range(base_cond.shape[1])) - removed))
    assert "supercalifragilistic: kept" in report
    expected_pooled = empty_meta if family == SDXL else base_meta
    assert torch.equal(meta["pooled_output"], expected_pooled["pooled_output"])


def test_redundant_causal_rule_keeps_last_tokens_on_clip(clips, node):
    from leakless.nodes.text.alignment import align
    from leakless.nodes.methods.flow import lexical_items

    clip = clips[SDXL]
    text = "a supercalifragilistic axolotl, a cat"
    base_cond, _ = clip_text_encode(clip, text)[0]
    empty, _ = reference_empty(clip, SDXL, 77)
    ((cond, _),), report = node("LeaklessRedundantTokenMask", clip=clip, text=text, mode="causal rule", items="",
                             classifier="none", threshold=0.5, pooled_output="prompt")
    removed = {p for it in lexical_items(align(text, clip.tokenizer), "l") for p in it.positions[:-1]}
    assert removed  # the prompt has multi-token words
    assert torch.equal(cond, dense_keep(base_cond, empty, set(range(77)) - removed))
    assert "cat" not in report.split("\n")[-1].split(":")[0]


def test_redundant_classifier_file(clips, node, tmp_path, comfy_nodes):
    import folder_paths
    from leakless.nodes.methods import redundancy
    from leakless.nodes.text.alignment import align

    clip = clips[FLUX]
    text = "a supercalifragilistic pelican"
    base_cond, _ = clip_text_encode(clip, text)[0]
    a = align(text, clip.tokenizer)
    pel = a.find("pelican").positions["t5xxl"]
    target = pel[0]
    direction = torch.nn.functional.normalize(base_cond[0, target].float(), dim=0)
    clf = redundancy.RedundancyClassifier("linear", direction.shape[0],
                                          {"weight": direction * 50, "bias": torch.tensor([-49.0])},
                                          {"family": "flux", "encoder": "t5xxl"})
    folder = folder_paths.get_folder_paths("leakless")[0]
    import os

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "test_linear.safetensors")
    redundancy.save(clf, path)
    import safetensors.torch

    not_ours = os.path.join(folder, "test_not_a_classifier.safetensors")
    safetensors.torch.save_file({"x": torch.zeros(1)}, not_ours)
    wrong = os.path.join(folder, "test_wrong_width.safetensors")
    redundancy.save(redundancy.fit_knn(torch.randn(4, 32), torch.tensor([0, 1, 0, 1]), 3), wrong)
    try:
        ((cond, _),), report = node("LeaklessRedundantTokenMask", clip=clip, text=text, mode="classifier",
                                 items="pelican", classifier="test_linear.safetensors", threshold=0.5,
                                 pooled_output="reference")
        empty, _ = reference_empty(clip, FLUX, base_cond.shape[1])
        assert torch.equal(cond, dense_keep(base_cond, empty, set(range(base_cond.shape[1])) - {target}))
        assert report.startswith("pelican: kept")
        with pytest.raises(ValueError, match="input 'classifier'.*32-wide"):
            node("LeaklessRedundantTokenMask", clip=clip, text=text, mode="classifier", items="",
                 classifier="test_wrong_width.safetensors", threshold=0.5, pooled_output="reference")
        with pytest.raises(ValueError, match="input 'classifier'.*not a Leakless redundancy classifier"):
            node("LeaklessRedundantTokenMask", clip=clip, text=text, mode="classifier", items="",
                 classifier="test_not_a_classifier.safetensors", threshold=0.5, pooled_output="reference")
    finally:
        for p in (path, wrong, not_ours):
            os.remove(p)


@pytest.mark.parametrize("node_id,kwargs,input_name,pattern", [
    ("LeaklessTokenTrace", dict(mode="selection", selection="horse", include_full_prompt=True,
                                pooled_output="reference"), "selection", "'horse' is not in the prompt"),
    ("LeaklessTokenTrace", dict(mode="selection", selection="", include_full_prompt=True,
                                pooled_output="reference"), "selection", "it is empty"),
    ("LeaklessTokenTrace", dict(mode="selection", selection="3, 900", include_full_prompt=True,
                                pooled_output="reference"), "selection", "position 900 is out of range"),
    ("LeaklessLeakPatch", dict(items="zebra"), "items", "'zebra' is not in the prompt"),
    ("LeaklessLeakPatch", dict(items=""), "items", "no item was given"),
    ("LeaklessRedundantTokenMask", dict(mode="causal rule", items="", classifier="none", threshold=0.5,
                                        pooled_output="reference"), "mode", "T5-XXL, which is bidirectional"),
    ("LeaklessRedundantTokenMask", dict(mode="classifier", items="", classifier="none", threshold=0.5,
                                        pooled_output="reference"), "classifier", "redundancy_cli"),
    ("LeaklessRedundantTokenMask", dict(mode="manual", items="cat", classifier="none", threshold=0.5,
                                        pooled_output="reference"), "items", "does not say which tokens"),
    ("LeaklessRedundantTokenMask", dict(mode="manual", items="cat, cat#2: 1", classifier="none", threshold=0.5,
                                        pooled_output="reference"), "items", "names 2 items"),
])
def test_bad_input_is_a_clear_error(clips, node, node_id, kwargs, input_name, pattern):
    with pytest.raises(ValueError, match=rf"^Leakless .*: input '{input_name}': .*{pattern}") as e:
        node(node_id, clip=clips[FLUX], text="a cat and a cat", **kwargs)
    assert " Fix: " in str(e.value)


def test_leak_patch_rejects_another_prompts_conditioning(clips, node):
    other = clip_text_encode(clips[SDXL], "a cat")
    with pytest.raises(ValueError, match="input 'conditioning'.*not this text's encoding"):
        node("LeaklessLeakPatch", clip=clips[SDXL], text=LONG, items="cat", conditioning=other)


def test_trace_grid_labels_every_image(comfy_nodes, node):
    images = torch.rand(6, 40, 56, 3)
    (grid,) = node("LeaklessTraceGrid", images=images, labels="full prompt\ncow: \u2581cow\nhorse", columns=0,
                   font_size=10)
    assert grid.shape[0] == 1 and grid.shape[-1] == 3 and grid.shape[2] == 3 * 56 + 2 * 4
    assert torch.equal(grid[0, :40, :56], (images[0] * 255).round() / 255)
    import comfy.utils

    # A latent batch of 2N gets the N conditionings tiled (c1..cN, c1..cN); labels must follow that order.
    tiled = comfy.utils.repeat_to_batch_size(torch.arange(3), 6).tolist()
    assert tiled == [0, 1, 2, 0, 1, 2]
    from leakless.nodes.methods.grid import labels_for_batch

    labels = ["a", "b", "c"]
    assert labels_for_batch(labels, 6) == [labels[i] for i in tiled]
    with pytest.raises(ValueError, match="input 'images': 6 images do not divide among 4 labels"):
        node("LeaklessTraceGrid", images=images, labels="a\nb\nc\nd", columns=0, font_size=10)


def test_trace_labels_read_as_words_and_the_grid_stays_small(clips, node):
    """FLUX: no SentencePiece '▁' in labels, padding summarised; more columns than images: as many as images."""
    clip = clips[FLUX]
    text = "a cow and bats"
    last = clip_text_encode(clip, text)[0][0].shape[1] - 1
    _, labels, count = node("LeaklessTokenTrace", clip=clip, text=text, mode="all but selection",
                            selection=f"cow, bats\n4-{last}", include_full_prompt=True, pooled_output="reference")
    assert labels.splitlines() == ["full prompt", "without cow, bats", f"without bat s </s> <pad x{last - 6}>"]
    images = torch.rand(count, 40, 56, 3)
    (grid,) = node("LeaklessTraceGrid", images=images, labels=labels, columns=64, font_size=10)
    (one_line,) = node("LeaklessTraceGrid", images=images, labels="a\nb\nc", columns=3, font_size=10)
    line = 10 + 4
    assert one_line.shape == (1, 40 + line + 8, 3 * 56 + 2 * 4, 3)  # three columns, not 64
    assert grid.shape == (1, 40 + 3 * line + 8, 3 * 56 + 2 * 4, 3)  # the longest label: three lines at most


# ---- whole graphs: every sampler, batch >= 2, cfg 1 and > 1 with a negative prompt of another length -----


def trace_graph_sdxl(sampler="KSampler"):
    g = graphs.sdxl_default(prompt="a cow and a horse", negative="blurry, text, watermark, low quality",
                            width=64, height=96)
    g["200"] = {"class_type": "LeaklessTokenTrace", "inputs": {
        "clip": ["4", 1], "text": "a cow and a horse", "mode": "each word", "selection": "",
        "include_full_prompt": True, "pooled_output": "reference"}}
    g["3"]["inputs"]["positive"] = ["200", 0]
    g["5"]["inputs"]["batch_size"] = ["200", 2]
    if sampler == "KSamplerAdvanced":
        inputs = g["3"]["inputs"]
        g["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
            "add_noise": "enable", "noise_seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable",
            "model": inputs["model"], "positive": inputs["positive"], "negative": inputs["negative"],
            "latent_image": inputs["latent_image"]}}
    g["201"] = {"class_type": "LeaklessTraceGrid", "inputs": {"images": ["8", 0], "labels": ["200", 1],
                                                              "columns": 0, "font_size": 12}}
    g["9"]["inputs"]["images"] = ["201", 0]
    return g


@pytest.mark.parametrize("sampler", ["KSampler", "KSamplerAdvanced"])
def test_sdxl_trace_grid_graph(comfy_nodes, sampler):
    import comfy_env

    outputs = comfy_env.run_prompt(trace_graph_sdxl(sampler))
    assert len(outputs["9"]["images"]) == 1


def test_flux_graph_mask_then_patch_with_custom_sampler(comfy_nodes):
    import comfy_env

    g = graphs.flux_dev(prompt="a pelican flying over a baseball stadium, a bat", width=96, height=64)
    g["27"]["inputs"]["batch_size"] = 2
    g["210"] = {"class_type": "LeaklessRedundantTokenMask", "inputs": {
        "clip": ["11", 0], "text": "a pelican flying over a baseball stadium, a bat", "mode": "manual",
        "items": "pelican: lic", "classifier": "none", "threshold": 0.5, "pooled_output": "reference"}}
    g["211"] = {"class_type": "LeaklessLeakPatch", "inputs": {
        "clip": ["11", 0], "text": "a pelican flying over a baseball stadium, a bat", "items": "bat",
        "conditioning": ["210", 0]}}
    g["26"]["inputs"]["conditioning"] = ["211", 0]
    outputs = comfy_env.run_prompt(g)
    assert len(outputs["9"]["images"]) == 2


def test_bypassed_nodes_give_bit_identical_conditioning(clips, node):
    """Settings that change nothing give CLIPTextEncode's exact output (what a bypass gives)."""
    clip = clips[SDXL]
    text = "a cat, a dog"
    base_cond, base_meta = clip_text_encode(clip, text)[0]
    ((cond, meta),), report = node("LeaklessRedundantTokenMask", clip=clip, text=text, mode="causal rule", items="",
                                classifier="none", threshold=0.5, pooled_output="reference")
    assert report.startswith("nothing removed")
    assert torch.equal(cond, base_cond) and torch.equal(meta["pooled_output"], base_meta["pooled_output"])


def test_img2img_with_patched_conditioning(comfy_nodes):
    """Conditioning edits with a partially denoised latent from an encoded image (non-square, batch 2)."""
    import comfy_env

    g = graphs.sdxl_default(prompt="bats near a baseball", negative="blurry", width=96, height=64)
    g["220"] = {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 2,
                                                       "color": 8421504}}
    g["221"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["220", 0], "vae": ["4", 2]}}
    g["222"] = {"class_type": "LeaklessLeakPatch", "inputs": {"clip": ["4", 1], "text": "bats near a baseball",
                                                              "items": "bats"}}
    g["3"]["inputs"].update({"latent_image": ["221", 0], "denoise": 0.6, "positive": ["222", 0]})
    outputs = comfy_env.run_prompt(g)
    assert len(outputs["9"]["images"]) == 2
    assert outputs["222"]["text"][0].startswith("bats: pasted")


def test_clip_skip_and_lora_state_are_respected(clips, node):
    """The empty prompt is encoded with the same clip-skip as the prompt, and the cache tells them apart."""
    import nodes as core

    clip = clips[SDXL]
    skipped = core.CLIPSetLastLayer().set_last_layer(clip, -1)[0]
    for c in (clip, skipped, clip):
        base_cond, _ = clip_text_encode(c, "a cat")[0]
        empty, _ = reference_empty(c, SDXL, 77)
        (cond, _), = node("LeaklessTokenTrace", clip=c, text="a cat", mode="selection", selection="cat",
                          include_full_prompt=False, pooled_output="prompt")[0]
        from leakless.nodes.text.alignment import align

        keep = set(align("a cat", c.tokenizer).find("cat").positions["l"])
        assert torch.equal(cond, dense_keep(base_cond, empty, keep))
    assert not torch.equal(clip_text_encode(clip, "")[0][0], clip_text_encode(skipped, "")[0][0])


def _classifier_bytes(tensors, meta):
    import safetensors.torch
    from leakless.nodes.methods import redundancy

    raw = meta if isinstance(meta, str) else json.dumps(meta)
    return safetensors.torch.save({k: torch.as_tensor(v) for k, v in tensors.items()},
                                  metadata={redundancy.META_KEY: raw})


LINEAR = {"weight": torch.ones(32), "bias": torch.zeros(1)}
BAD_CLASSIFIERS = {  # file contents -> what the error must say
    "not_safetensors": (lambda: b"PK\x03\x04 a zip file, not safetensors", "is not a readable .safetensors file"),
    "empty": (lambda: b"", "is empty"),
    "meta_not_json": (lambda: _classifier_bytes(LINEAR, "{kind: linear"), "metadata that is not JSON"),
    "meta_not_object": (lambda: _classifier_bytes(LINEAR, "[1, 2]"), "not a JSON object"),
    "kind_wrong": (lambda: _classifier_bytes(LINEAR, {"kind": "svm", "width": 32}), "'kind' 'svm'"),
    "width_string": (lambda: _classifier_bytes(LINEAR, {"kind": "linear", "width": "32"}), "'width' '32'"),
    "k_float": (lambda: _classifier_bytes({"features": torch.ones(3, 32), "labels": torch.ones(3)},
                                          {"kind": "knn", "width": 32, "k": 2.5}), "'k' 2.5"),
    "weight_width": (lambda: _classifier_bytes(LINEAR, {"kind": "linear", "width": 768}),
                     r"'weight' tensor of shape \[32\].*needs \[768\]"),
    "labels_count": (lambda: _classifier_bytes({"features": torch.ones(3, 32), "labels": torch.ones(4)},
                                               {"kind": "knn", "width": 32}), r"'labels' tensor of shape \[4\]"),
    "features_width": (lambda: _classifier_bytes({"features": torch.ones(3, 16), "labels": torch.ones(3)},
                                                 {"kind": "knn", "width": 32}), r"'features' tensor .*\[N, 32\]"),
    "missing_bias": (lambda: _classifier_bytes({"weight": torch.ones(32)}, {"kind": "linear", "width": 32}),
                     r"lacks the tensors \['bias'\]"),
    "nan_weight": (lambda: _classifier_bytes({"weight": torch.full((32,), float("nan")), "bias": torch.zeros(1)},
                                             {"kind": "linear", "width": 32}), "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLASSIFIERS))
def test_bad_classifier_file_is_a_clear_error_through_the_executor(comfy_nodes, case):
    """Each broken file in models/leakless/, selected on a real graph: an error naming the file and the problem."""
    import os

    import comfy_env
    import folder_paths

    content, pattern = BAD_CLASSIFIERS[case]
    folder = folder_paths.get_folder_paths("leakless")[0]
    os.makedirs(folder, exist_ok=True)
    name = f"test_bad_{case}.safetensors"
    with open(os.path.join(folder, name), "wb") as f:
        f.write(content())
    graph = {
        "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                            "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "x": {"class_type": "LeaklessRedundantTokenMask", "inputs": {
            "clip": ["clip", 0], "text": "a supercalifragilistic pelican", "mode": "classifier", "items": "",
            "classifier": name, "threshold": 0.5, "pooled_output": "reference"}},
        "out": {"class_type": "PreviewAny", "inputs": {"source": ["x", 1]}},
    }
    try:
        with pytest.raises(comfy_env.ExecutionFailed) as e:
            comfy_env.run_prompt(graph)
    finally:
        os.remove(os.path.join(folder, name))
    detail = e.value.args[0]
    assert isinstance(detail, dict), detail
    assert detail["exception_type"].endswith("LeaklessInputError")
    assert re.search(rf"^Leakless Redundant Token Mask: input 'classifier': .*{re.escape(name)} .*{pattern}.* Fix: ",
                     detail["exception_message"]), detail["exception_message"]
