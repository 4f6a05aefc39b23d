# recsys: the two commands are `make run` and `make test`; both set everything up first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
RUN_ARGS ?=
# A MovieLens folder for `make run` (default: a synthetic catalogue).
MOVIELENS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-only lint format typecheck protos check-protos buf-lint \
	buf-breaking check bench lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "python3.11 not found" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e clients/python -e '.[cpu,train,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create the venv and install the platform, client and dev tools (pinned)

run: install ## Prepare the sample deployment, serve it on 127.0.0.1:50051 until Ctrl-C
	$(BIN)/recsys demo $(if $(MOVIELENS),--movielens $(MOVIELENS)) $(RUN_ARGS)

test: install check test-only ## Lint, type-check, check the protos, then run every test

test-only: install ## Run the tests only
	$(BIN)/pytest $(PYTEST_ARGS)

check: lint typecheck buf-lint check-protos buf-breaking ## Every static check

lint: install ## ruff lint and format check
	$(BIN)/ruff check server clients tests bench scripts
	$(BIN)/ruff format --check server clients tests bench scripts

format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix server clients tests bench scripts
	$(BIN)/ruff format server clients tests bench scripts

typecheck: install ## mypy (strict) on server/ and clients/
	$(BIN)/mypy server/recsys clients/python/recsys_client

protos: install ## Regenerate the Python code of protos/ (committed; never edit it by hand)
	PYTHON=$(BIN)/python scripts/generate_protos.sh

check-protos: install ## Fail when the committed generated code drifts from protos/
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	PYTHON=$(BIN)/python scripts/generate_protos.sh "$$tmp" >/dev/null 2>&1 && \
	diff -r "$$tmp/recsys/v1" clients/python/recsys/v1 -x __pycache__ && \
	echo "generated code matches protos/"

buf-lint: install ## Buf STANDARD + COMMENTS lint of protos/
	$(BIN)/buf lint
	@echo "buf lint: clean"

buf-breaking: install ## buf breaking against HEAD and the published baseline
	BUF=$(BIN)/buf scripts/check_breaking.sh

bench: install ## Benchmarks (results in bench/results/ and docs/benchmarks.md)
	$(BIN)/python -m bench.run

lock: install ## Re-pin constraints.txt from the installed environment
	@{ echo "# Every package of the development environment, pinned (make install uses it as pip"; \
	   echo "# constraints). Regenerate after changing pyproject.toml: make lock"; \
	   $(BIN)/pip freeze --exclude-editable | grep -v '^-e' | sort -f; } > constraints.txt

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
