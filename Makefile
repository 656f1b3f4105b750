# boldcloud: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-output
# Tests run on one pytest-xdist worker per core; each module stays on one worker (its module
# fixtures are built once). Each worker that needs SLURM starts its own (free ports, own dirs).
PYTEST_ARGS ?= -n auto --dist loadfile
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test install install-dev lint clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade "pip>=24"

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: simulate a small reference study and run the pipeline on a local Dask cluster and store
demo: install
	$(BIN)/boldcloud demo --out $(DEMO)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

system-deps:
	bash .ci/system-deps

## test: lint, import-direction check and the test suite (system-deps: Chromium, SLURM, munge)
test: lint system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
