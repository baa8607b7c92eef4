# Two entry points: `make run` (set up, fetch the default model, serve on 127.0.0.1:7860) and
# `make test` (set up everything the suite needs, then run it). Both are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS_ALL := smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b

.PHONY: run test setup setup-dev chromium models bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .  # the package itself: .venv/bin/specviz
	touch $@

$(STAMP)-dev: requirements-dev.txt $(STAMP)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(STAMP)

setup-dev: $(STAMP)-dev chromium

# The browser test drives Debian's chromium (never `playwright install`, which downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

models: setup
	$(BIN)/python -m specviz fetch $(MODELS_ALL)

run: setup
	$(BIN)/python -m specviz fetch smollm2-135m
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py

test: setup-dev models
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -q tests

bench: setup models
	$(BIN)/python -m specviz bench --target smollm2-135m --drafter pld --compare-hf --json out/bench-smollm2-pld.json

clean:
	rm -rf $(VENV)
