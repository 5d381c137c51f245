#!/usr/bin/env bash
# `make run`: ComfyUI on 127.0.0.1:8188 with Leakless loaded.
#   default:                     the same ComfyUI 0.3.75 build the tests use, in .cache/ (installed if missing)
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
  py="$cache/venv/bin/python"
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || args+=(--cpu)
  args+=(--base-directory "$base" --database-url "sqlite:///$base/user/comfyui.db")
  models="$base/models"
  cd "$cache/comfyui"
fi
cat <<MSG
[leakless] model files go in $models:
  FLUX.1 (dev, schnell, Kontext):  diffusion_models/flux1-dev.safetensors, vae/ae.safetensors,
                                   text_encoders/t5xxl_fp16.safetensors + clip_l.safetensors
  Chroma:                          diffusion_models/<chroma>.safetensors, vae/ae.safetensors, text_encoders/t5xxl_fp16.safetensors
  SDXL:                            checkpoints/sd_xl_base_1.0.safetensors
  SD1.5:                           checkpoints/v1-5-pruned-emaonly.safetensors
  Redundant Token Mask classifiers: leakless/<name>.safetensors
[leakless] example workflows: Workflow > Browse Templates > leakless (or drag one from $repo/examples_workflows/);
  open token_inspector_flux (FLUX) or token_inspector_sdxl (SDXL) first: it shows how your prompt is tokenized
[leakless] starting ComfyUI on http://127.0.0.1:$port
MSG
exec "$py" main.py "${args[@]}"
