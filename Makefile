# Two commands for a fresh machine (see README.md):
#   make bench   the main job: session throughput on the embedded SQLite default
#   make test    lint, type-check and every test (starts the servers it needs)
# Each creates .venv and installs what it needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

PEERS_VENV := .venv-peers

.PHONY: bench bench-peers test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

# SQLite only by default (about a minute, no server needed). More:
#   make bench ARGS="--backend postgres --url postgresql://postgres@127.0.0.1:5432/test"
#   make bench ARGS="--backend all --postgres-url ... --duration 10 --peers"
bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(ARGS)

# The peers (Agno, LangGraph) in their own environment, never in .venv, then the suite with them.
$(PEERS_VENV)/.installed: benchmarks/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r benchmarks/peers/requirements.txt
	touch $@

bench-peers: $(VENV)/.bench-installed $(PEERS_VENV)/.installed
	$(BIN)/python -m benchmarks --peers $(ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(PEERS_VENV) tmp .mypy_cache .ruff_cache .hypothesis
