# Set-up and checks. Every target creates .venv on first use, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: demo test lint install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUNTIME_STAMP)

install: $(STAMP)

# The main job on the built-in model: a held-out scene, camera arc + an object moved behind another.
demo: $(RUNTIME_STAMP)
	$(BIN)/trackedit demo --out demo_out

# Style and static checks (config in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Lint, then the whole suite; 8 simulated CPU devices are set up by tests/conftest.py.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25 tests

clean:
	rm -rf $(VENV) .pytest_cache demo_out
