"""Train and evaluate a redundant-token classifier for Leakless Redundant Token Mask.

Run from ComfyUI's custom_nodes/ folder (the pack is the package `leakless`):

    python -m leakless.nodes.redundancy_cli data.csv --clip-type flux \\
        --text-encoders t5xxl_fp16.safetensors clip_l.safetensors --out ../models/leakless/flux-t5

data.csv has the columns prompt,item,token_index,representative: one row per token of a multi-token item;
token_index counts from 0 inside the item as the Token Inspector lists the item's rows (T5 for FLUX, CLIP for
SDXL/SD1.5, the LLM for Qwen-Image and the like); representative is yes/no (does an image generated from that
token alone show the item?). Features are the token rows the diffusion model reads. --clip-type is a Leakless
family id (flux, sdxl, sd15, qwen_image, z_image, ...; 'sd1' is still read as sd15). Rows are split into
train/test by item, never by token, and the precision of the redundant class on the test items is reported,
for k-NN (cosine) and a linear probe.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm  # ComfyUI's own dependency

from .methods import redundancy
from .registry.families import BY_ID
from .text.alignment import ROWS, align
from .text.grammar import SelectionError, find_ref, parse_phrases

ALIASES = {"sd1": "sd15"}  # the name this CLI first gave SD1.5


def clip_type(family_id: str) -> str:
    """The comfy.sd.CLIPType member that loads a family's text encoder files (its CLIPLoader/DualCLIPLoader
    `type`; DualCLIPLoader's 'sdxl' and CLIPLoader's 'stable_diffusion' are STABLE_DIFFUSION)."""
    loader_type = next((t for _, t in BY_ID[family_id].loaders if t), family_id)
    return "STABLE_DIFFUSION" if loader_type == "sdxl" else loader_type.upper()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m leakless.nodes.redundancy_cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="labelled tokens: prompt,item,token_index,representative (yes/no)")
    p.add_argument("--clip-type", choices=sorted([*BY_ID, *ALIASES]), required=True,
                   help="model family of the encoder (a Leakless family id)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-encoders", nargs="+", metavar="FILE",
                     help="text encoder files (paths, or names under models/text_encoders)")
    src.add_argument("--checkpoint", metavar="FILE", help="an SDXL/SD1.5 checkpoint (path or name)")
    p.add_argument("--comfyui", metavar="DIR", help="ComfyUI folder (default: the one this pack is installed in)")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="output prefix: writes PREFIX-knn.safetensors and PREFIX-linear.safetensors")
    p.add_argument("--kind", choices=["knn", "linear", "both"], default="both")
    p.add_argument("--k", type=int, default=0, help="neighbours for k-NN; 0 picks k in 1..15 on the train items")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of items held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _import_comfy(comfyui: str | None):
    try:
        import comfy.sd  # noqa: F401 - already importable (running inside ComfyUI's environment)
    except ImportError:
        root = Path(comfyui) if comfyui else Path(__file__).resolve().parents[3]
        if not (root / "comfy").is_dir():
            raise SystemExit(f"ComfyUI not found at {root}; pass --comfyui /path/to/ComfyUI") from None
        sys.path.insert(0, str(root))
    import comfy.sd
    import folder_paths

    return comfy.sd, folder_paths


def _resolve(folder_paths, folder: str, name: str) -> str:
    if os.path.isfile(name):
        return name
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise SystemExit(f"{name}: no such file, nor in models/{folder}")
    return path


def load_clip(args):
    sd, folder_paths = _import_comfy(args.comfyui)
    if args.checkpoint:
        return sd.load_checkpoint_guess_config(_resolve(folder_paths, "checkpoints", args.checkpoint),
                                               output_vae=False, output_clip=True)[1]
    paths = [_resolve(folder_paths, "text_encoders", n) for n in args.text_encoders]
    return sd.load_clip(ckpt_paths=paths, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                        clip_type=getattr(sd.CLIPType, clip_type(ALIASES.get(args.clip_type, args.clip_type))))


def read_rows(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"prompt", "item", "token_index", "representative"}
    if not rows or not need <= set(rows[0]):
        raise SystemExit(f"{path}: needs a header with the columns {', '.join(sorted(need))}")
    return rows


def features_and_labels(clip, rows: list[dict]):
    """One feature row (the token's conditioning row) and label (1 = redundant) per CSV row."""
    feats, labels, items = [], [], []
    by_prompt: dict[str, list[tuple[int, dict]]] = {}
    for i, row in enumerate(rows):
        by_prompt.setdefault(row["prompt"], []).append((i, row))
    for prompt, entries in tqdm(by_prompt.items(), desc="Leakless: encoding prompts", unit="prompt", file=sys.stderr):
        alignment = align(prompt, clip.tokenizer, clip.tokenize(prompt, return_word_ids=True))
        if alignment.family is None:
            raise SystemExit(f"the text encoder's tokenizer ({', '.join(alignment.encoders)}) is not of a family "
                             "Leakless knows")
        cond = clip.encode_from_tokens_scheduled(alignment.tokens)[0][0][0]
        for i, row in entries:
            try:
                (ref,) = parse_phrases(row["item"], "items")
            except (SelectionError, ValueError) as e:
                raise SystemExit(f"row {i + 2}: give one item, a phrase of the prompt ({e})") from None
            positions = find_ref(alignment, ref).of(ROWS)
            index = int(row["token_index"])
            if not 0 <= index < len(positions):
                raise SystemExit(f"row {i + 2}: '{ref}' has {len(positions)} token(s); token_index {index} is "
                                 "out of range")
            feats.append(cond[positions[index]].float())
            labels.append(0.0 if row["representative"].strip().lower() in ("yes", "y", "1", "true") else 1.0)
            items.append(f"{prompt}\x00{ref}")
    return torch.stack(feats), torch.tensor(labels), items


def choose_k(x: torch.Tensor, y: torch.Tensor, items: list, seed: int) -> int:
    """k with the best redundant-class precision on an item-split of the training rows (ties: larger k)."""
    inner_train, inner_val = redundancy.split_by_item(items, 0.75, seed + 1)
    if not inner_val:
        return min(7, len(inner_train))
    best, best_k = -1.0, 1
    for k in range(1, min(15, len(inner_train)) + 1):
        clf = redundancy.fit_knn(x[inner_train], y[inner_train], k)
        p = redundancy.redundant_precision(clf.scores(x[inner_val]) > 0.5, y[inner_val])
        p = -1.0 if p != p else p  # nan: predicted nothing redundant
        if p >= best:
            best, best_k = p, k
    return best_k


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    rows = read_rows(args.csv)
    clip = load_clip(args)
    x, y, items = features_and_labels(clip, rows)
    train, test = redundancy.split_by_item(items, 1 - args.test_fraction, args.seed)
    family = BY_ID[ALIASES.get(args.clip_type, args.clip_type)]
    meta = {"family": family.id, "encoder": "+".join(family.row_encoders), "trained_on": os.path.basename(args.csv),
            "n_train": len(train), "n_test": len(test)}
    results = {}
    kinds = ["knn", "linear"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        if kind == "knn":
            k = args.k or choose_k(x[train], y[train], [items[i] for i in train], args.seed)
            clf = redundancy.fit_knn(x[train], y[train], k, meta)
        else:
            clf = redundancy.fit_linear(x[train], y[train], meta=meta)
        predicted = clf.scores(x[test]) > 0.5
        precision = redundancy.redundant_precision(predicted, y[test])
        accuracy = float((predicted == y[test].bool()).float().mean()) if test else float("nan")
        clf.meta.update({"test_precision": precision, "test_accuracy": accuracy})
        path = f"{args.out}-{kind}.safetensors"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        redundancy.save(clf, path)
        results[kind] = {"file": path, "precision_redundant": precision, "accuracy": accuracy,
                         **({"k": clf.k} if kind == "knn" else {})}
    print(json.dumps({"train_rows": len(train), "test_rows": len(test), **results}, indent=1))
    return results


if __name__ == "__main__":
    main()
