# Leakless developer commands. Everything installs what it needs into .cache/ (git-ignored) on first use.
PY := $(or $(LEAKLESS_CACHE),.cache)/venv/bin/python

.PHONY: test test-unit test-fast test-0.3.75 test-0.33.0 run env lint bench workflows screenshots fingerprints clean

## make test: build the cached test environment if needed, then run all four test layers on ComfyUI 0.3.75 and 0.33.0
##   (ARGS="-k deleaker" passes pytest arguments; LEAKLESS_COMFYUI_DIR=/path/ComfyUI tests that checkout instead)
test: env
	bash tests/harness/run_matrix.sh $(ARGS)

## make test-unit: the fast unit tier, in a process without ComfyUI: the pure modules and the patches (seconds)
test-unit: env
	$(PY) -m pytest tests/unit -q $(ARGS)

## make test-fast: the contributor loop: lint, the unit tier without ComfyUI, and one headless pass (the pack through
##   ComfyUI's loader, the official FLUX and SDXL graphs) on ComfyUI 0.3.75; no server, no browser
test-fast: env
	$(PY) -m ruff check .
	$(PY) -m pytest tests/unit -q
	LEAKLESS_MATRIX=0.3.75 bash tests/harness/run_matrix.sh tests/headless/test_pack_headless.py $(ARGS)

## make test-0.3.75 / make test-0.33.0: one version of the matrix only
test-0.3.75 test-0.33.0: env
	LEAKLESS_MATRIX=$(@:test-%=%) bash tests/harness/run_matrix.sh $(ARGS)

## make run: ComfyUI on 127.0.0.1:8188 with Leakless (COMFYUI_DIR=/path/to/ComfyUI to use your own install)
run:
	bash tests/harness/run_comfyui.sh

env:
	bash tests/harness/setup_env.sh

lint: env
	$(PY) -m ruff check .

bench: env
	$(PY) bench/bench_alignment.py
	$(PY) bench/bench_flow.py
	$(PY) bench/bench_deleaker.py
	$(PY) bench/bench_attention_calls.py
	$(PY) bench/bench_tome.py

## make workflows: regenerate examples_workflows/ from tests/workflows/examples.py through the real frontend
workflows: env
	$(PY) tests/harness/export_workflows.py

## make screenshots: the README's workflow screenshots (docs/screenshots/), from the browser tests
screenshots: env
	$(PY) -m pytest tests/browser -k pinned -q
	$(PY) tests/harness/export_screenshots.py

clean:
	rm -rf .cache test-output

## make fingerprints: the SHA-256 of every example's and every family graph's output latent on both ComfyUI versions,
##   compared with tests/data/fingerprints.json (ARGS=--write records them); see tests/harness/fingerprints.py
fingerprints: env
	LEAKLESS_COMFYUI=0.3.75 $(PY) tests/harness/fingerprints.py $(ARGS)
	LEAKLESS_COMFYUI=0.33.0 $(or $(LEAKLESS_CACHE),.cache)/venv-0.33.0/bin/python tests/harness/fingerprints.py $(ARGS)
