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
  mkdir -p "$base"/{custom_nodes,input,output,temp,user} "$base"/models/{checkpoints,diffusion_models,text_encoders,vae}
  [ -e "$base/custom_nodes/leakless" ] || ln -s "$repo" "$base/custom_nodes/leakless"
  py="$cache/venv/bin/python"
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || args+=(--cpu)
  args+=(--base-directory "$base" --database-url "sqlite:///$base/user/comfyui.db")
  models="$base/models"
  cd "$cache/comfyui"
fi
cat <<MSG
[leakless] model files go in $models:
  FLUX:  diffusion_models/flux1-dev.safetensors, text_encoders/t5xxl_fp16.safetensors + clip_l.safetensors, vae/ae.safetensors
  SDXL:  checkpoints/sd_xl_base_1.0.safetensors
[leakless] example workflows: $repo/examples_workflows/ (drag a .json onto the canvas)
[leakless] starting ComfyUI on http://127.0.0.1:$port
MSG
exec "$py" main.py "${args[@]}"
