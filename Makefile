# careloop — two commands: `make demo` and `make test`. Both install what is missing first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.careloop-installed
export CARELOOP_HOME ?= $(CURDIR)/.careloop

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip "setuptools>=77" wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/careloop demo

# Each run gets its own TMPDIR (Beam and Ray leave temp folders behind), removed afterwards.
test: setup
	@tmp=$$(mktemp -d -t careloop-test.XXXXXX); \
	TMPDIR=$$tmp $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	rm -rf $$tmp; exit $$rc

test-fast: PYTEST_ARGS = -m "not slow"
test-fast: test

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	@tmp=$$(mktemp -d -t careloop-bench.XXXXXX); rc=0; \
	for b in benchmarks/[a-z]*.py; do echo "== $$b"; TMPDIR=$$tmp $(BIN)/python $$b || rc=1; done; \
	rm -rf $$tmp; exit $$rc

clean:
	rm -rf .careloop .pytest_cache .ruff_cache
