"""Output fingerprints: the SHA-256 of every output latent of every example workflow (shrunk as the tests run them)
and of every family's tiny-model DeLeaker, heatmap, ToMe and Follow the Flow graph (tests/workflows/
family_graphs.py), on the ComfyUI this process selects (comfy_env.py). A refactor that must not change outputs
keeps every fingerprint bit for bit.

    make fingerprints                  # both ComfyUI versions: compare with tests/data/fingerprints.json
    make fingerprints ARGS=--write     # record them (only before a change that must keep them)
    LEAKLESS_COMFYUI=0.33.0 .cache/venv-0.33.0/bin/python tests/harness/fingerprints.py [--write] [-k NAME]

Runs on the CPU with one thread (bit-exact on one machine; another CPU may round differently, so this is a tool
for a refactor on one machine, not a test). Exit status 1 when a fingerprint differs.
"""

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/: the workflows package

import comfy_env  # noqa: E402

RECORD = HERE.parents[1] / "tests" / "data" / "fingerprints.json"
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced")


def with_digests(graph: dict) -> dict:
    """`graph` with the latent digest after every sampler (ids 900, 901, ...)."""
    samplers = sorted(i for i, n in graph.items() if n["class_type"] in SAMPLERS)
    for n, sampler in enumerate(samplers):
        graph[str(900 + n)] = {"class_type": "TinyTestLatentDigest", "inputs": {"samples": [sampler, 0]}}
    return graph


def graphs():
    """(name, API graph, why it cannot run here or None) of every fingerprinted graph."""
    from workflows import examples, family_graphs
    import tiny_models

    for name, build in examples.EXAMPLES.items():
        yield f"example/{name}", with_digests(examples.shrink(build())), examples.unavailable(name)
    have = set(tiny_models.text_encoders()) | {"flux", "sdxl", "sd15"}
    for family in family_graphs.FAMILIES:
        for method in family_graphs.METHODS:
            if family_graphs.applies(family, method):
                missing = None if family in have else f"ComfyUI {comfy_env.COMFY_NAME} has no {family}"
                yield f"{family}/{method}", (family_graphs.graph(family, method) if not missing else None), missing


def digests(outputs: dict) -> list[str]:
    return [d for node_id in sorted(outputs, key=int) for d in outputs[node_id].get("digest", [])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="record this version's fingerprints")
    parser.add_argument("-k", default="", help="only graphs whose name contains this")
    args = parser.parse_args()
    nodes = comfy_env.import_comfy()  # noqa: F841 - ComfyUI imported headless, CPU only
    import torch
    import tiny_models

    torch.set_num_threads(1)
    tiny_models.write_all(str(comfy_env.BASE / "models"))
    comfy_env.load_all_nodes()
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    known = record.get(comfy_env.COMFY_NAME, {})
    found, failed = {}, []
    for name, graph, why in graphs():
        if args.k not in name:
            continue
        if why:
            found[name] = f"not run: {why}"
            print(f"{name}: skipped ({why})", flush=True)
            continue
        t0 = time.time()
        try:
            found[name] = digests(comfy_env.run_prompt(graph))
        except comfy_env.ExecutionFailed as e:  # an error is a fingerprint too (it must stay the same error)
            error = e.args[0]
            found[name] = (f"error: {error['node_type']}: {error['exception_message'][:300]}" if isinstance(error, dict)
                           else f"error: {str(error)[:300]}")
        same = name not in known or known[name] == found[name]
        print(f"{name}: {'same' if same else 'DIFFERENT'} {found[name]} ({time.time() - t0:.1f} s)", flush=True)
        if not same:
            failed.append(name)
    if args.write:
        record[comfy_env.COMFY_NAME] = {**known, **found} if args.k else found
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(found)} fingerprints for ComfyUI {comfy_env.COMFY_NAME} to {RECORD}")
        return 0
    missing = [n for n in known if args.k in n and n not in found]
    print(f"ComfyUI {comfy_env.COMFY_NAME}: {len(found) - len(failed)} of {len(found)} fingerprints as recorded"
          + (f"; DIFFERENT: {', '.join(failed)}" if failed else "") + (f"; not run: {missing}" if missing else ""))
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
