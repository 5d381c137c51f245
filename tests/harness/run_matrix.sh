#!/usr/bin/env bash
# `make test`: every test layer (unit, headless, server, browser) on every ComfyUI of the matrix, one pytest
# process per version (ComfyUI is imported once per process). Extra arguments go to pytest.
#   LEAKLESS_MATRIX="0.33.0"             run some versions only (default: "0.3.75 0.33.0")
#   LEAKLESS_COMFYUI_DIR=/path/ComfyUI   run on that checkout only, with LEAKLESS_COMFYUI_PYTHON (default: the
#                                        0.33.0 venv, which has what a current ComfyUI imports)
#   LEAKLESS_REQUIRE_MATRIX=1            a version that cannot run is a failure, not a skip (CI sets it)
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${LEAKLESS_CACHE:-$repo/.cache}
cd "$repo"

python_for() {
  case $1 in
    0.3.75) echo "$cache/venv/bin/python" ;;
    custom) echo "${LEAKLESS_COMFYUI_PYTHON:-$cache/venv-0.33.0/bin/python}" ;;
    *) echo "$cache/venv-$1/bin/python" ;;
  esac
}
tree_for() {
  case $1 in
    0.3.75) echo "$cache/comfyui" ;;
    custom) echo "$LEAKLESS_COMFYUI_DIR" ;;
    *) echo "$cache/comfyui-$1" ;;
  esac
}

if [ -n "${LEAKLESS_COMFYUI_DIR:-}" ]; then versions=custom; else versions=${LEAKLESS_MATRIX:-"0.3.75 0.33.0"}; fi
status=0
summary=()
rm -f test-output/*/skipped.txt  # written by tests/conftest.py: skipped tests by reason, with the fix
for v in $versions; do
  py=$(python_for "$v"); tree=$(tree_for "$v")
  if [ ! -x "$py" ] || [ ! -f "$tree/main.py" ]; then
    msg="no tree at $tree or no Python at $py (see tests/harness/setup_env.sh: provide the 0.33.0 source with
  LEAKLESS_COMFYUI_TARBALL, or any checkout with LEAKLESS_COMFYUI_DIR)"
    if [ "${LEAKLESS_REQUIRE_MATRIX:-0}" = 1 ]; then
      echo "[leakless] ERROR: ComfyUI $v is required here (LEAKLESS_REQUIRE_MATRIX=1): $msg" >&2
      status=1; summary+=("$v: MISSING"); continue
    fi
    echo "[leakless] ComfyUI $v skipped: $msg" >&2; summary+=("$v: skipped (no tree)"); continue
  fi
  label=$v; [ "$v" = custom ] && label="$(basename "$tree") ($tree)"
  echo "[leakless] ===== ComfyUI $label: all test layers ====="
  t0=$(date +%s)
  if [ "$v" = custom ]; then
    env LEAKLESS_COMFYUI_DIR="$tree" "$py" -m pytest "$@"; rc=$?
  else
    env -u LEAKLESS_COMFYUI_DIR LEAKLESS_COMFYUI="$v" "$py" -m pytest "$@"; rc=$?
  fi
  summary+=("$label: exit $rc in $(( $(date +%s) - t0 )) s")
  [ $rc -eq 0 ] || status=1
done
echo "[leakless] test matrix:"
printf '[leakless]   ComfyUI %s\n' "${summary[@]}"
for skipped in test-output/*/skipped.txt; do
  [ -f "$skipped" ] || continue
  echo "[leakless] skipped on ComfyUI $(basename "$(dirname "$skipped")"), and how to run them:"
  sed 's/^/[leakless]  /' "$skipped"
done
exit $status
