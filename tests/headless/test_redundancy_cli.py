"""The classifier training CLI: run as a user would (python -m from custom_nodes/) and on the tiny encoders."""

import csv
import os
import subprocess
import sys

import comfy_env


def test_help_from_custom_nodes():
    r = subprocess.run([sys.executable, "-m", "leakless.nodes.redundancy_cli", "--help"],
                       cwd=comfy_env.BASE / "custom_nodes", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "prompt,item,token_index,representative" in r.stdout and "--text-encoders" in r.stdout


def test_train_on_tiny_flux_and_use_the_file(comfy_nodes, leakless, tmp_path, capsys):
    import folder_paths
    import nodes
    from leakless.nodes import redundancy_cli
    from leakless.nodes.methods import redundancy

    words = ["pelican", "axolotl", "supercalifragilistic", "hummingbird", "quokka", "platypus", "chinchilla",
             "armadillo"]
    data = tmp_path / "tokens.csv"
    clip = nodes.DualCLIPLoader().load_clip("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")[0]
    from leakless.nodes.text.alignment import align

    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "item", "token_index", "representative"])
        for word in words:
            prompt = f"a photo of a {word} in the grass"
            n = len(align(prompt, clip.tokenizer).find(word).positions["t5xxl"])
            for i in range(n):
                w.writerow([prompt, word, i, "yes" if i == n - 1 else "no"])
    out = os.path.join(folder_paths.get_folder_paths("leakless")[0], "tiny-flux")
    try:
        results = redundancy_cli.main([str(data), "--clip-type", "flux", "--text-encoders",
                                       "t5xxl_fp16.safetensors", "clip_l.safetensors", "--out", out,
                                       "--test-fraction", "0.25"])
        assert set(results) == {"knn", "linear"}
        progress = capsys.readouterr().err  # the terminal progress bar over the prompts it encodes
        assert "Leakless: encoding prompts: 100%" in progress and f"{len(words)}/{len(words)}" in progress
        knn = redundancy.load(results["knn"]["file"])
        assert knn.width == 64 and knn.meta["family"] == "flux" and 1 <= knn.k <= 15
        node = nodes.NODE_CLASS_MAPPINGS["LeaklessRedundantTokenMask"]
        (_, report) = node.execute(clip=clip, text="a pelican near an axolotl", mode="classifier", items="",
                                   classifier="tiny-flux-linear.safetensors", threshold=0.5,
                                   pooled_output="reference").args
        assert report
    finally:
        for kind in ("knn", "linear"):
            if os.path.exists(f"{out}-{kind}.safetensors"):
                os.remove(f"{out}-{kind}.safetensors")
