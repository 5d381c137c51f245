"""Cost of prompt<->token alignment (what the Token Inspector and every Leakless method pay per prompt).

    make bench        (or: .cache/venv/bin/python bench/bench_alignment.py)

Writes bench/results/alignment.md. CPU only; no model weights (tokenizers only). The figure to compare is the
alignment time against ComfyUI's own tokenize call on the same prompt, which the alignment includes.
"""

import platform

from common import REPO, median_time

import comfy_env  # noqa: E402 - on the path set up by common
from conftest import import_pack_as  # noqa: E402


def main():
    comfy_env.import_comfy()
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.flux

    import_pack_as("leakless")
    from leakless.nodes.text.alignment import align

    families = {"SD1.5": comfy.sd1_clip.SD1Tokenizer(), "SDXL": comfy.sdxl_clip.SDXLTokenizer(),
                "FLUX": comfy.text_encoders.flux.FluxTokenizer()}
    prompts = {
        "short (7 words)": "A cow and a horse in a farm",
        "one chunk (~70 tokens)": ", ".join(f"a (red:1.1) cat number {i}" for i in range(10)),
        "multi-chunk (~700 tokens)": ", ".join(f"a (red:1.1) cat number {i}" for i in range(100)),
    }
    rows = []
    for fname, tok in families.items():
        for pname, prompt in prompts.items():
            base = median_time(lambda t=tok, p=prompt: t.tokenize_with_weights(p, return_word_ids=True), 20)
            ours = median_time(lambda t=tok, p=prompt: align(p, t), 20)
            rows.append((fname, pname, base * 1e3, ours * 1e3, ours / base))

    lines = [
        "# Prompt<->token alignment",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.python_version()}, CPU only; "
        "median of 20 runs. Reproduce: `make bench`.",
        "",
        "| family | prompt | ComfyUI tokenize (ms) | Leakless align (ms) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {f} | {p} | {b:.2f} | {o:.2f} | {r:.1f}x |" for f, p, b, o, r in rows]
    out = REPO / "bench" / "results" / "alignment.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
