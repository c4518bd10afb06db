# Two commands on a fresh clone:  `make run` (set up + serve)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint venv dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make run` needs only the runtime dependencies; `make test` adds the dev extra
# (pytest, hypothesis, ruff, mypy, pyyaml and the CPU build of torch for the parity tests).
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(RUNTIME)

venv: $(RUNTIME)

dev: $(DEV)

run: $(RUNTIME)
	$(BIN)/gradwatch serve --host $(HOST) --port $(PORT)

lint: $(DEV)
	$(BIN)/ruff check core app tests bench
	$(BIN)/mypy

test: $(DEV) lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
