"""The pack loaded by ComfyUI's own loader and run through the headless executor on tiny random-weight models."""

import pytest
from expected import SCHEMAS
from workflows import graphs

# comfy_extras modules that fail to import in the test environment for reasons unrelated to Leakless: on 0.3.75,
# spandrel and torchaudio are not installed; on 0.33.0, nodes_replacements needs PromptServer.instance (headless).
EXPECTED_CORE_FAILURES = {"nodes_upscale_model.py", "nodes_audio.py", "nodes_audio_encoder.py",
                          "nodes_replacements.py"}


def leakless_ids(nodes):
    return sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Leakless"))


def test_pack_loads_through_comfyui_loader(comfy_nodes):
    nodes, failed = comfy_nodes
    assert set(failed) <= EXPECTED_CORE_FAILURES, failed
    assert "leakless" in nodes.LOADED_MODULE_DIRS
    assert leakless_ids(nodes) == sorted(SCHEMAS)


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_schema_is_pinned_and_documented(comfy_nodes, node_id):
    nodes, _ = comfy_nodes
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    info = cls.INPUT_TYPES()
    ordered = list(info.get("required", {})) + list(info.get("optional", {}))
    assert ordered == SCHEMAS[node_id]
    schema = cls.GET_SCHEMA()
    assert schema.display_name.startswith("Leakless ")
    assert schema.category.startswith("Leakless/")
    assert len(schema.description) > 40
    for spec in schema.inputs:
        assert spec.tooltip and len(spec.tooltip) > 20, f"{node_id}.{spec.id} needs a tooltip"


def inspector_text(outputs, node_id="100"):
    return outputs[node_id]["text"][0]


def test_token_inspector_flux_dual_clip_loader(comfy_nodes):
    graph = {
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                          "clip_name2": "clip_l.safetensors", "type": "flux"}},
    }
    graph = graphs.with_token_inspector(graph, ["11", 0], "A cow and a (horse:1.2) in a farm")
    table = inspector_text(graphs_run(graph))
    assert "T5-XXL" in table and "CLIP-L" in table
    assert "\u2581cow" in table and "horse</w>" in table and "1.2" in table
    assert "<pad x" in table


def test_token_inspector_sdxl_checkpoint_and_dual_clip_agree(comfy_nodes):
    text = "a cat wearing sunglasses and a dog wearing a hat"
    ckpt = graphs.with_token_inspector(
        {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}},
        ["4", 1], text)
    dual = graphs.with_token_inspector(
        {"11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                           "clip_name2": "clip_g.safetensors", "type": "sdxl"}}},
        ["11", 0], text)
    a, b = inspector_text(graphs_run(ckpt)), inspector_text(graphs_run(dual))
    assert a == b
    assert "CLIP-G" in a and "CLIP-L" in a and "sunglasses</w>" in a


def test_token_inspector_sd15(comfy_nodes):
    graph = graphs.with_token_inspector(
        {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}}},
        ["4", 1], "a red cat")
    table = inspector_text(graphs_run(graph))
    assert "CLIP-L" in table and "CLIP-G" not in table and "red</w>" in table


def test_positions_match_the_encoded_conditioning(comfy_nodes, leakless):
    """The inspector's positions are the rows CLIPTextEncode produces, for every family and a multi-chunk prompt."""
    nodes, _ = comfy_nodes
    align = leakless.nodes.text.alignment.align
    long_prompt = ", ".join(f"a (red:1.1) cat number {i}" for i in range(30))
    flux_clip = nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]
    sdxl_clip = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")[1]
    for clip, key in ((flux_clip, "t5xxl"), (sdxl_clip, "l")):
        for text in ("a cat", long_prompt):
            cond = nodes.CLIPTextEncode().encode(clip, text)[0][0][0]
            assert cond.shape[1] == align(text, clip.tokenizer).encoders[key].length


def test_official_flux_dev_graph_with_inspector(comfy_nodes, output_dir):
    graph = graphs.with_token_inspector(graphs.flux_dev(), ["11", 0], graphs.PROMPT)
    outputs = graphs_run(graph)
    assert outputs["9"]["images"][0]["filename"].endswith(".png")
    assert "\u2581horse" in inspector_text(outputs)


def test_official_sdxl_graph_with_inspector(comfy_nodes):
    graph = graphs.with_token_inspector(graphs.sdxl_default(width=96, height=64), ["4", 1], "purple galaxy bottle")
    outputs = graphs_run(graph)
    assert outputs["9"]["images"][0]["filename"].endswith(".png")
    assert "galaxy</w>" in inspector_text(outputs)


def test_runs_on_the_selected_comfyui(comfy):
    """The process imported the ComfyUI the matrix asked for (LEAKLESS_COMFYUI / LEAKLESS_COMFYUI_DIR), not another
    one found on the path."""
    import comfy_env
    import comfyui_version

    assert comfy.__file__.startswith(str(comfy_env.COMFY_DIR))
    assert comfyui_version.__version__ == ".".join(map(str, comfy_env.COMFY_VERSION))
    if comfy_env.COMFY_NAME in comfy_env.MATRIX:
        assert comfyui_version.__version__ == comfy_env.COMFY_NAME


def test_tiny_flux_attention_is_not_uniform(comfy_nodes):
    """The tiny FLUX as the loader builds it keeps RMSNorm scales at 1 (as real models have them), so its attention
    is peaked: a renamed or retyped norm in a new ComfyUI must not silently give near-uniform attention."""
    import torch

    nodes, _ = comfy_nodes
    model = nodes.UNETLoader().load_unet("flux1-dev.safetensors", "default")[0]
    norms = [m for m in model.model.diffusion_model.modules() if "RMSNorm" in type(m).__name__]
    assert len(norms) >= 4
    for m in norms:
        assert abs(float(next(m.parameters()).float().mean()) - 1.0) < 0.1
    peaks = []

    def record(func, q, k, v, *args, **kwargs):
        if kwargs.get("skip_reshape"):
            probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            peaks.append(float(probs.max(-1).values.mean() * probs.shape[-1]))  # 1.0 for uniform attention
        return func(q, k, v, *args, **kwargs)

    patched = model.clone()
    patched.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = record
    clip = nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]
    cond = nodes.CLIPTextEncode().encode(clip, "a cow and a horse")[0]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    nodes.common_ksampler(patched, 1, 1, 1.0, "euler", "simple", cond, cond, latent)
    assert peaks and min(peaks) > 2.0, peaks  # measured: 3.3 and 8.8; with the norm scales at 0: 1.0


def test_missing_clip_is_a_clear_error(leakless, comfy_nodes):
    nodes, _ = comfy_nodes
    cls = nodes.NODE_CLASS_MAPPINGS["LeaklessTokenInspector"]
    with pytest.raises(ValueError, match=r"Leakless Token Inspector: input 'clip': .* Fix: connect a CLIP"):
        cls.execute(clip=None, text="a cat")


def graphs_run(graph):
    import comfy_env

    return comfy_env.run_prompt(graph)


def test_environment_has_the_pins_of_this_comfyui(comfy):
    """The test venv carries the frontend this ComfyUI pins (the browser layer's 'pinned' run), its workflow
    templates and embedded docs, so the server (and `make run`) starts as a user's does: no error banner."""
    import importlib.metadata
    import re

    import comfy_env

    pins = dict(re.findall(r"^(comfyui-[a-z-]+)==([0-9.]+)", (comfy_env.COMFY_DIR / "requirements.txt").read_text(),
                           re.M))
    assert "comfyui-frontend-package" in pins
    required = pins
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            assert name not in required, f"{name}=={version} is not installed"
            continue
        assert installed == version, (name, installed, version)


def test_loading_the_pack_keeps_the_users_files_in_example_workflows(tmp_path):
    """ComfyUI's own loader on a copy of the pack whose example_workflows/ holds a user's workflow and thumbnail
    (kept byte for byte), the user's edit of a copy the pack made (kept; the pack's template of that name is left
    out, with a warning), and a copy of a template the pack no longer ships (removed: the pack wrote it)."""
    import importlib.util
    import json
    import shutil
    import subprocess
    import sys

    from pack import HARNESS, REPO

    pack = tmp_path / "custom_nodes" / "leakless"
    shutil.copytree(REPO, pack, ignore=shutil.ignore_patterns(".git", "tests", "bench", "docs", "example_workflows",
                                                              "test-output", "__pycache__", ".cache"))
    spec = importlib.util.spec_from_file_location("leakless_templates", pack / "nodes" / "driver" / "templates.py")
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    target = pack / "example_workflows"
    target.mkdir()
    mine = {"my_workflow.json": b'{"nodes": [], "links": []}', "my_workflow.jpg": b"\xff\xd8\xff mine"}
    for name, data in mine.items():
        (target / name).write_bytes(data)
    original = (pack / "examples_workflows" / "flux_deleaker.json").read_bytes()
    (target / "flux_deleaker.json").write_bytes(original.replace(b"A **cow**", b"A **goat**"))
    (target / "retired_example.json").write_bytes(b'{"nodes": []}')
    (target / templates.WRITTEN).write_text(json.dumps({"files": {
        "flux_deleaker.json": templates.digest(original), "retired_example.json": templates.digest(b'{"nodes": []}')}}))
    code = ("import asyncio, sys, comfy_env; n = comfy_env.import_comfy();"
            f"sys.exit(0 if asyncio.run(n.load_custom_node({str(pack)!r})) else 1)")
    r = subprocess.run([sys.executable, "-c", code], cwd=HARNESS, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, data in mine.items():
        assert (target / name).read_bytes() == data, name
    assert b"A **goat**" in (target / "flux_deleaker.json").read_bytes()
    assert "flux_deleaker.json in" in r.stderr and "were kept" in r.stderr, r.stderr[-3000:]
    assert not (target / "retired_example.json").exists()
    for path in (pack / "examples_workflows").iterdir():
        if path.name != "flux_deleaker.json":
            assert (target / path.name).read_bytes() == path.read_bytes(), path.name
