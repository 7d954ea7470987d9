# The two commands of the README: `make run` (set up, then simulate the quickstart plant)
# and `make test` (set up, then lint and run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run compare compare-plaid qat-share test lint browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray,plaid]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/fedhq-sim run scenarios/quickstart.yaml

# Every policy on the FedHQ comparison scenario over seeds 1-5 (docs/results.md).
compare: $(STAMP)
	$(BIN)/fedhq-sim compare scenarios/fedhq_comparison.yaml --seeds 1 2 3 4 5

# docs/results.md on the PLAID task: every policy at 4 and at 8 bits (the control), and the
# QAT-share curve (6 shares x 3 ways of choosing who runs QAT); seeds 1-5, two runs at a time.
compare-plaid: $(STAMP)
	$(BIN)/fedhq-sim compare scenarios/plaid_comparison.yaml --seeds 1 2 3 4 5 --target 0.6 --jobs 2
	$(BIN)/fedhq-sim compare scenarios/plaid_comparison.yaml --seeds 1 2 3 4 5 --target 0.6 --jobs 2 \
	  --set deployment.bits=8

qat-share: $(STAMP)
	$(BIN)/fedhq-sim sweep scenarios/plaid_qat_share.yaml --target 0.6 --seeds 1 2 3 4 5 --jobs 2 \
	  --set policy.qat_fraction=0,0.1,0.25,0.5,0.75,1 --set policy.choose=skew,hardware,random

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The report tests open report.html in Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$(FEDHQ_NO_BROWSER)" = 1 ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test needs Debian's chromium: sudo apt-get install chromium (or set FEDHQ_NO_BROWSER=1)"; exit 1; fi; }

test: lint browser
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) bench/.venv-flower results .pytest_cache .ruff_cache

# Benchmarks (docs/benchmarks.md), one command each from a fresh clone; ARGS='--repeats 5' passes options.
.PHONY: bench-scale bench-overhead bench-long bench-parallel bench-flower
bench-scale: $(STAMP)  # timing-only runs of 100 to 10,000 clients: wall time, memory, growth
	$(BIN)/python bench/timing_scale.py $(ARGS)

bench-overhead: $(STAMP)  # a full-mode round against the same PyTorch work run bare
	$(BIN)/python bench/overhead.py $(ARGS)

bench-long: $(STAMP)  # memory over a 200-round full-mode run
	$(BIN)/python bench/long_run.py $(ARGS)

bench-parallel: $(STAMP)  # a 20-client round serially, on a process pool and on Ray
	$(BIN)/python bench/parallel_speedup.py --engines process ray $(ARGS)

# fedhq-sim's full mode against Flower's simulation engine on one FedAvg workload, in
# bench/.venv-flower (Flower is no dependency of fedhq-sim).
bench-flower:
	bash bench/flower_env.sh $(ARGS)
