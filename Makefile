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

# The framework integrations (async_agent_storage.integrations): each framework in a virtualenv of
# its own, .venv-<extra>, with the project installed as '.[<extra>,dev]'. The main test session runs
# each one's tests with its interpreter (tests/integrations/test_framework_envs.py). An environment
# that cannot be built does not stop the build: its reason goes to .venv-<extra>/NOT_BUILT and its
# tests are reported NOT RUN.
INTEGRATIONS     := openai-agents agno adk
INTEGRATION_ENVS := $(foreach extra,$(INTEGRATIONS),.venv-$(extra)/.installed)
# What the tests and the comparison (make bench-integrations) add: the frameworks' own storage.
TEST_DEPS_openai-agents := 'sqlalchemy[asyncio]>=2'
TEST_DEPS_agno          := 'sqlalchemy[asyncio]>=2' 'psycopg[binary]>=3.2'
TEST_DEPS_adk           := 'sqlalchemy[asyncio]>=2'

.PHONY: bench bench-peers bench-integrations test lint typecheck pytest mongoeco integrations agno-envs chromium clean

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

$(INTEGRATION_ENVS): .venv-%/.installed: pyproject.toml
	@mkdir -p .venv-$* && rm -f .venv-$*/NOT_BUILT; \
	if $(PYTHON) -m venv .venv-$* > .venv-$*/build.log 2>&1 && \
	   .venv-$*/bin/python -m pip install --quiet --disable-pip-version-check \
	     -e '.[$*,dev]' $(TEST_DEPS_$*) >> .venv-$*/build.log 2>&1; then \
	  touch $@; \
	else \
	  echo "pip could not install '.[$*,dev]': $$(grep -E 'ERROR|error:' .venv-$*/build.log | tail -n 2 | tr '\n' ' ')(log: .venv-$*/build.log)" \
	    > .venv-$*/NOT_BUILT; \
	  echo "$*: environment not built, its tests will be reported NOT RUN (see .venv-$*/build.log)"; \
	fi

integrations: $(INTEGRATION_ENVS)

# One framework turn through each adapter against the framework's own storage (docs/integrations.md).
#   make bench-integrations ARGS="--postgres-url postgresql://postgres@127.0.0.1:5432/test --rounds 5"
bench-integrations: $(INTEGRATION_ENVS)
	@for extra in $(INTEGRATIONS); do \
	  if [ -f .venv-$$extra/NOT_BUILT ]; then echo "$$extra: NOT RUN: $$(cat .venv-$$extra/NOT_BUILT)"; \
	  else .venv-$$extra/bin/python -m benchmarks.integrations $$extra $(ARGS) || exit 1; fi; \
	done

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

# The dashboard's browser tests drive Debian's Chromium through Playwright (never a browser that
# Playwright downloads). Installed here when missing and possible (root and apt-get), in at most
# 10 minutes; otherwise the reason goes to tmp/chromium.NOT_INSTALLED and those tests are
# reported NOT RUN with it. AAS_TEST_CHROMIUM names another executable.
CHROMIUM ?= /usr/bin/chromium

chromium:
	@mkdir -p tmp; rm -f tmp/chromium.NOT_INSTALLED; \
	if [ -x "$${AAS_TEST_CHROMIUM:-$(CHROMIUM)}" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then \
	  echo "not installed, and apt-get cannot install it here (it needs root and apt-get)" \
	    > tmp/chromium.NOT_INSTALLED; \
	else \
	  echo "chromium: apt-get install -y chromium (log: tmp/chromium-install.log)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { timeout 600 apt-get install -y --no-install-recommends chromium || \
	    { timeout 300 apt-get update && \
	      timeout 600 apt-get install -y --no-install-recommends chromium; }; \
	  } > tmp/chromium-install.log 2>&1 || \
	  echo "apt-get install chromium failed: $$(tail -n 2 tmp/chromium-install.log | tr '\n' ' ')" \
	    > tmp/chromium.NOT_INSTALLED; \
	fi; \
	if [ -f tmp/chromium.NOT_INSTALLED ]; then \
	  echo "chromium: $$(cat tmp/chromium.NOT_INSTALLED); the browser tests will be reported NOT RUN"; \
	fi

pytest: $(VENV)/.dev-installed $(MONGOECO_VENV)/.installed $(INTEGRATION_ENVS) agno-envs chromium
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(MONGOECO_VENV) $(PEERS_VENV) $(foreach extra,$(INTEGRATIONS),.venv-$(extra)) \
		$(AGNO_ENVS) tmp .mypy_cache .ruff_cache .hypothesis
