"""Cost of prompt<->token alignment (what the Token Inspector and every Leakless method pay per prompt).

    make bench        (or: .cache/venv/bin/python bench/bench_alignment.py)

Writes bench/results/alignment.md. CPU only; no model weights (tokenizers only). The figure to compare is the
alignment time against ComfyUI's own tokenize call on the same prompt, which the alignment includes.
"""

import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

import comfy_env  # noqa: E402


def timed(fn, repeat):
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main():
    comfy_env.import_comfy()
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.flux

    spec = importlib.util.spec_from_file_location("leakless", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    sys.modules["leakless"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["leakless"])
    from leakless.nodes.alignment import align

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
            base = timed(lambda t=tok, p=prompt: t.tokenize_with_weights(p, return_word_ids=True), 20)
            ours = timed(lambda t=tok, p=prompt: align(p, t), 20)
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
