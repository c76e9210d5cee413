# Set-up and checks. Every target creates .venv on first use, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: demo test test-latest lint install bench clean fuzz

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
PYTEST_ARGS := -q -n 2 --dist loadgroup --durations=25 tests
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The second leg: the same suite on Python 3.12 with the newest jax, flax, orbax, grain and optax, in its own
# venv. No torch wheel for 3.12 is installed, so the tests against the PyTorch reference skip, saying so.
PY_LATEST ?= $(or $(shell ls -d /root/.pyenv/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -n 1),python3.12)
VENV_LATEST := .venv-latest
BIN_LATEST := $(VENV_LATEST)/bin
STAMP_LATEST := $(VENV_LATEST)/.installed-test

$(BIN_LATEST)/python:
	$(PY_LATEST) -m venv $(VENV_LATEST)
	$(BIN_LATEST)/pip install -q --upgrade pip

$(STAMP_LATEST): pyproject.toml | $(BIN_LATEST)/python
	$(BIN_LATEST)/pip install -q --upgrade -e '.[test-latest]' jax jaxlib flax optax orbax-checkpoint grain
	$(BIN_LATEST)/python -c "import sys, jax; print('test-latest: Python', sys.version.split()[0], 'jax', jax.__version__)"
	touch $(STAMP_LATEST)

test-latest: $(STAMP_LATEST)
	$(BIN_LATEST)/python -m pytest $(PYTEST_ARGS)

# The long fuzz run of every reader (50,000 examples each, tests/helpers/fuzzing.py); it prints its seed
# first (FUZZ_SEED=N reruns one). CPU heavy: minutes to hours.
fuzz: $(STAMP)
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; echo "fuzz seed: $$seed"; \
	TRACKEDIT_FUZZ=long $(BIN)/python -m pytest -q -n 2 --hypothesis-seed=$$seed \
		$$(find tests -name 'test_fuzz_*.py' | sort)

clean:
	rm -rf $(VENV) $(VENV_LATEST) .pytest_cache demo_out
