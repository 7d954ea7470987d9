# The two commands of the README: `make run` (set up, then simulate the quickstart plant)
# and `make test` (set up, then lint and run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run compare test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/fedhq-sim run scenarios/quickstart.yaml

# Every policy on the FedHQ comparison scenario over seeds 1-3 (docs/results.md).
compare: $(STAMP)
	$(BIN)/fedhq-sim compare scenarios/fedhq_comparison.yaml --seeds 1 2 3 4 5

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache
