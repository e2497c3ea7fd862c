# Two commands matter: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp
export PREFECT_HOME ?= $(CURDIR)/.retailml/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# a temporary Prefect server (plain runs, tests) starts slowly on a busy 2-core machine
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export DBT_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: install demo test lint format unit integration e2e bench clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# benchmark-only peers (dlt, ADBC): not needed by `make install`, `make test` or CI
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-bench.txt
	@touch $(BENCH_STAMP)

## make demo: simulate a year of a small shop, run the whole pipeline, serve the API
demo: install
	$(BIN)/retailml demo

## make test: lint, then unit + integration + end-to-end tests (dbt build on DuckDB and PostgreSQL)
test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check python flows tests benchmarks
	$(BIN)/ruff format --check python flows tests benchmarks
	RETAILML_DUCKDB_PATH=:memory: $(BIN)/sqlfluff lint dbt_project

format: install
	$(BIN)/ruff check --fix python flows tests benchmarks
	$(BIN)/ruff format python flows tests benchmarks

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

e2e: install
	$(BIN)/pytest tests/e2e

bench: $(BENCH_STAMP)
	@set -e; for b in $(wildcard benchmarks/*.py); do echo "== $$b"; $(BIN)/python $$b; done

clean:
	-$(BIN)/retailml services down
	rm -rf .retailml dbt_project/target dbt_project/logs
