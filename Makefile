# Two commands for a fresh machine (see README.md):
#   make bench   the main job: session throughput on the embedded SQLite default
#   make test    lint, type-check and every test (starts the servers it needs)
# Each creates .venv and installs what it needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The MongoDB tests run against mongoeco's wire-protocol server, which needs Python >= 3.13:
# it gets a virtual environment of its own (see tests/mongo/conftest.py).
MONGOECO_VENV := .venv-mongoeco
MONGOECO      := mongoeco[wire]==4.11.0

# The peers the benchmarks compare with (Agno, LangGraph): never installed into .venv.
PEERS_VENV := .venv-peers

.PHONY: bench bench-peers test lint typecheck pytest mongoeco agno-envs clean

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

# Finds a Python >= 3.13 (pyenv's, then any on PATH). Without one, the MongoDB tests are reported
# NOT RUN and the rest still runs; with one, a failed install fails the build.
$(MONGOECO_VENV)/.installed:
	@py=""; \
	for candidate in "$$(pyenv prefix 3.13 2>/dev/null)/bin/python3.13" \
	    $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3 2>/dev/null) \
	    $$(command -v python3.13 python3.14 python3.15 2>/dev/null); do \
	  if [ -x "$$candidate" ] && "$$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then \
	    py="$$candidate"; break; \
	  fi; \
	done; \
	if [ -z "$$py" ]; then \
	  echo "No Python >= 3.13 found: the MongoDB tests will be reported NOT RUN."; \
	else \
	  echo "mongoeco: $$py -m venv $(MONGOECO_VENV)"; \
	  rm -rf $(MONGOECO_VENV) && "$$py" -m venv $(MONGOECO_VENV) && \
	  $(MONGOECO_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '$(MONGOECO)' && \
	  touch $@; \
	fi

mongoeco: $(MONGOECO_VENV)/.installed

# `aas import agno` is tested on tables that each Agno version wrote itself: one environment per
# version (pinned in tests/cli/agno/requirements-agnoN.txt), never .venv. A failed install does not
# fail the build: those tests are reported NOT RUN with the end of .venv-agnoN/install.log.
AGNO_ENVS := .venv-agno1 .venv-agno2 .venv-agno3

.venv-agno%/.installed: tests/cli/agno/requirements-agno%.txt
	@rm -rf .venv-agno$*; mkdir -p .venv-agno$*; \
	if $(PYTHON) -m venv .venv-agno$* > .venv-agno$*/install.log 2>&1 && \
	   .venv-agno$*/bin/python -m pip install --disable-pip-version-check -r $< \
	     >> .venv-agno$*/install.log 2>&1; then \
	  touch $@; \
	else \
	  echo "Agno $*.x could not be installed (.venv-agno$*/install.log): its tests are NOT RUN"; \
	fi

agno-envs: $(addsuffix /.installed,$(AGNO_ENVS))

pytest: $(VENV)/.dev-installed $(MONGOECO_VENV)/.installed agno-envs
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(MONGOECO_VENV) $(PEERS_VENV) $(AGNO_ENVS) tmp .mypy_cache .ruff_cache .hypothesis
