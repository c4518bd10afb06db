# Two commands on a fresh clone:  `make run` (set up + serve)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint venv dev clean browser

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
	$(BIN)/ruff check core app client tests bench
	$(BIN)/mypy

# The browser tests drive Debian's chromium with Playwright (never `playwright install`: no
# browser download). Installed here when missing (needs root, as in CI); without it the
# browser tests skip, and under CI=true they fail.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "could not install chromium: the browser tests will skip (and fail under CI=true)"

test: $(DEV) lint browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
