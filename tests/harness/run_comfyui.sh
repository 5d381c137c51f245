#!/usr/bin/env bash
# `make run`: ComfyUI on 127.0.0.1:8188 with Leakless loaded.
#   default:                     the newest ComfyUI of the test matrix in .cache/ (installed if missing): 0.33.0 when
#                                its source was there to build it, else 0.3.75 (a line says why)
#   COMFYUI_DIR=/path make run:  links this pack into that install's custom_nodes/ and starts it there
# PORT=8189 and COMFY_ARGS="--lowvram" are passed through.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
port=${PORT:-8188}
args=(--listen 127.0.0.1 --port "$port" ${COMFY_ARGS:-})

if [ -n "${COMFYUI_DIR:-}" ]; then
  [ -f "$COMFYUI_DIR/main.py" ] || { echo "COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1; }
  link="$COMFYUI_DIR/custom_nodes/leakless"
  if [ -e "$link" ] && [ "$(readlink -f "$link")" != "$repo" ]; then
    echo "$link exists and is not this checkout; remove it first" >&2; exit 1
  fi
  [ -e "$link" ] || ln -s "$repo" "$link"
  py=${COMFYUI_PYTHON:-}
  for cand in "$COMFYUI_DIR/venv/bin/python" "$COMFYUI_DIR/.venv/bin/python" python3; do
    [ -n "$py" ] && break
    command -v "$cand" >/dev/null 2>&1 && py=$cand
  done
  models="$COMFYUI_DIR/models"
  cd "$COMFYUI_DIR"
else
  bash "$repo/tests/harness/setup_env.sh"
  cache=${LEAKLESS_CACHE:-$repo/.cache}
  base="$cache/run-base"
  mkdir -p "$base"/{custom_nodes,input,output,temp,user/default} \
    "$base"/models/{checkpoints,diffusion_models,text_encoders,vae,leakless}
  [ -e "$base/custom_nodes/leakless" ] || ln -s "$repo" "$base/custom_nodes/leakless"
  # A first start opens on the canvas, not on the first-run Templates dialog (Workflow > Browse Templates has them).
  settings="$base/user/default/comfy.settings.json"
  [ -f "$settings" ] || echo '{"Comfy.TutorialCompleted": true}' > "$settings"
  if [ -f "$cache/comfyui-0.33.0/main.py" ] && [ -x "$cache/venv-0.33.0/bin/python" ]; then
    tree="$cache/comfyui-0.33.0" py="$cache/venv-0.33.0/bin/python" db=comfyui-0.33.0.db
  else
    tree="$cache/comfyui" py="$cache/venv/bin/python" db=comfyui.db
    echo "[leakless] ComfyUI 0.33.0 is not built in $cache (its source, ../shared/comfyui/ComfyUI-0.33.0.tar.gz or" \
      "LEAKLESS_COMFYUI_TARBALL, was missing when the environment was made), so this is ComfyUI 0.3.75, whose" \
      "frontend cannot run the FLUX.2 examples; provide the source and run make env to get 0.33.0"
  fi
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || args+=(--cpu)
  args+=(--base-directory "$base" --database-url "sqlite:///$base/user/$db")  # one database per version
  models="$base/models"
  cd "$tree"
fi
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' comfyui_version.py 2>/dev/null || true)
echo "[leakless] model files go in $models, under the names the example workflows load:"
# Read from examples_workflows/*.json (every loader's file input), so the list follows the examples.
"$py" - "$repo/examples_workflows" <<'PY'
import json, os, pathlib, sys
FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders",
           "DualCLIPLoader": "text_encoders", "TripleCLIPLoader": "text_encoders",
           "QuadrupleCLIPLoader": "text_encoders", "VAELoader": "vae", "LoraLoader": "loras",
           "LoraLoaderModelOnly": "loras"}
groups = {}  # the files an example loads -> the examples that load exactly those
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    files = []
    for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
        values = node.get("widgets_values") or []
        for value in values.values() if isinstance(values, dict) else values:
            if isinstance(value, str) and value.lower().endswith((".safetensors", ".ckpt", ".pt", ".sft", ".gguf")):
                files.append(f"{FOLDERS.get(node['type'], node['type'] + '?')}/{value}")
    order = list(dict.fromkeys(FOLDERS.values()))
    files = sorted(set(files), key=lambda f: (order.index(f.split("/")[0]) if f.split("/")[0] in order else 9, f))
    groups.setdefault(tuple(files), []).append(path.stem)
for files, names in groups.items():
    heads = {}
    for name in names:
        heads.setdefault(name.split("_")[0], []).append(name)
    label = [same[0] if len(same) == 1 else os.path.commonprefix(same).rsplit("_", 1)[0] + "_*" for same in heads.values()]
    print(f"  {', '.join(label)}:" + "".join(f"\n      {f}" for f in files))
PY
cat <<MSG
  Chroma, SD1.5 and the other families: their own files in the same folders (README, "First run")
  Redundant Token Mask classifiers: leakless/<name>.safetensors
[leakless] example workflows: Workflow > Browse Templates > leakless (or drag one from $repo/examples_workflows/);
  open token_inspector_flux (FLUX) or token_inspector_sdxl (SDXL) first: it shows how your prompt is tokenized
[leakless] starting ComfyUI ${version:-(version unknown)} on http://127.0.0.1:$port
MSG
exec "$py" main.py "${args[@]}"
