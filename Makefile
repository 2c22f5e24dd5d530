# The commands of the README: `make demo`, `make test` and `make bench`. Each builds .venv on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench findings clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: on these machines this takes the CPU wheel on disk (a range would pull CUDA builds)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,notebooks,ray,figures]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/interp demo --out results/demo --overwrite

test: $(STAMP)
	$(BIN)/ruff check interp tests benchmarks docs
	$(BIN)/python -m pytest -q -x -n 2 --dist loadfile --durations=15 tests

# the README's organism findings with their bootstrap intervals; --check fails unless README.md quotes them as computed
findings: $(STAMP)
	$(BIN)/python docs/findings.py
	$(BIN)/python docs/findings.py --check

bench: $(STAMP)
	# every benchmarks/bench_*.py's cases (--quick sizes) -> benchmarks/results.md, the table the README quotes
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results .pytest_cache
