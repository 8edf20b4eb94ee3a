# The two commands of the README. Both work on a machine with only Python 3.10+ installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/tokenmill: pyproject.toml setup.py $(wildcard native/*.pyx)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/tokenmill

# The test suite also checks our shards with Megatron-LM's own reader (megatron-core + torch)
# and runs the DAGs on a real Airflow (apache-airflow 3.3.2, about 1 GB with its packages).
$(VENV)/.test-extras: $(BIN)/tokenmill
	$(BIN)/pip install --quiet -e ".[test,megatron,airflow]"
	touch $@

## make demo: set up, then run the whole pipeline on the bundled sample.
demo: setup
	$(BIN)/tokenmill run configs/laptop.yaml

## make test: set up, then run the whole test suite (what CI runs).
test: setup $(VENV)/.test-extras
	TOKENMILL_REQUIRE_MEGATRON=1 TOKENMILL_REQUIRE_AIRFLOW=1 $(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python benchmarks/bench_clean.py

clean:
	rm -rf runs build native/*.so native/*.cpp
