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
.PHONY: help install node-install run test test-only lint format typecheck protos check-protos \
	node-protos check-node-protos buf-lint buf-breaking check bench drills lock clean monitoring-tools check-monitoring

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "python3.11 not found" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e clients/python -e '.[cpu,train,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create the venv and install the platform, client and dev tools (pinned)

# The TypeScript client (clients/node): its packages, exactly as package-lock.json pins them.
# Without npm, the Node steps are skipped (their test too), except under CI=true: there they fail.
NODE_DIR := clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
NODE_MISSING = { if [[ "$${CI,,}" == true ]]; then \
	echo "npm not found (CI=true: Node.js 20+ and npm are required)" >&2; exit 1; fi; \
	echo "npm not found: skipping the TypeScript client (install Node.js 20+ and npm)" >&2; }

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || \
	  { echo "Node.js 20+ is required, found $$(node --version)" >&2; exit 1; }
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node-install: ## npm ci in clients/node (the TypeScript client; from package-lock.json)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(NODE_STAMP); \
	else $(NODE_MISSING); fi

run: install ## Prepare the sample deployment, serve it on 127.0.0.1:50051 until Ctrl-C
	$(BIN)/recsys demo $(if $(MOVIELENS),--movielens $(MOVIELENS)) $(RUN_ARGS)

test: install node-install check test-only ## Lint, type-check, check the protos, then run every test

test-only: install node-install ## Run the tests only
	$(BIN)/pytest $(PYTEST_ARGS)

check: lint typecheck buf-lint check-protos check-node-protos buf-breaking check-monitoring ## Every static check

lint: install ## ruff lint and format check
	$(BIN)/ruff check server clients tests bench drills scripts
	$(BIN)/ruff format --check server clients tests bench drills scripts

format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix server clients tests bench drills scripts
	$(BIN)/ruff format server clients tests bench drills scripts

typecheck: install ## mypy (strict) on server/ and clients/
	$(BIN)/mypy server/recsys clients/python/recsys_client

protos: install ## Regenerate the Python code of protos/ (committed; never edit it by hand)
	PYTHON=$(BIN)/python scripts/generate_protos.sh

check-protos: install ## Fail when the committed generated code drifts from protos/
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	PYTHON=$(BIN)/python scripts/generate_protos.sh "$$tmp" >/dev/null 2>&1 && \
	diff -r "$$tmp/recsys/v1" clients/python/recsys/v1 -x __pycache__ && \
	echo "generated code matches protos/"

node-protos: install node-install ## Regenerate the TypeScript code of clients/node/src/gen (committed)
	$(BIN)/buf generate --template buf.gen.node.yaml

check-node-protos: install node-install ## Fail when clients/node/src/gen drifts from protos/
	@if ! command -v npm >/dev/null; then $(NODE_MISSING); exit 0; fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BIN)/buf generate --template buf.gen.node.yaml --output "$$tmp" && \
	diff -r "$$tmp/$(NODE_DIR)/src/gen" $(NODE_DIR)/src/gen && \
	echo "generated TypeScript code matches protos/"

buf-lint: install ## Buf STANDARD + COMMENTS lint of protos/
	$(BIN)/buf lint
	@echo "buf lint: clean"

buf-breaking: install ## buf breaking against HEAD and the published baseline
	BUF=$(BIN)/buf scripts/check_breaking.sh

monitoring-tools: ## Prometheus and promtool (Debian's package) for the rules checks and tests
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		echo "installing Debian's prometheus package (promtool, prometheus)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

check-monitoring: monitoring-tools ## promtool checks and unit tests of monitoring/alerts.yml
	promtool check rules monitoring/alerts.yml
	cd monitoring && promtool test rules alerts.test.yml

bench: install ## Benchmarks (results in bench/results/ and docs/benchmarks.md); SCALE=10m: only the 10M-item scale run
	$(if $(filter 10m,$(SCALE)),BENCH_ONLY=scale )$(BIN)/python -m bench.run

drills: install ## Failure drills under load on the distributed layout, then disaster recovery (docs/drills.md; ~15 min plus setup; not part of make test). DRILLS_ONLY=a,b: a subset
	$(BIN)/python -m drills.run

lock: install ## Re-pin constraints.txt from the installed environment
	@{ echo "# Every package of the development environment, pinned (make install uses it as pip"; \
	   echo "# constraints). Regenerate after changing pyproject.toml: make lock"; \
	   $(BIN)/pip freeze --exclude-editable | grep -v '^-e' | sort -f; } > constraints.txt

clean: ## Remove the venv, the Node packages and the caches
	rm -rf $(VENV) $(NODE_DIR)/node_modules $(NODE_DIR)/dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
