# Every target installs what it needs first; installing twice is a no-op.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install run dev test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "Installing Keel and its dependencies (llama-cpp-python builds from source the first time: ~5 min)"
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## run one default task end to end on the embedded stack
	$(BIN)/keel run

dev: $(STAMP)  ## Temporal dev server (UI on :8233) + every worker, until Ctrl-C
	$(BIN)/keel dev

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)  ## every benchmark, quick form; see bench/README.md
	$(BIN)/python bench/overhead.py --quick
	$(BIN)/python bench/planning.py --quick
	$(BIN)/python bench/routing.py --quick
	$(BIN)/python bench/triton.py --quick

clean:
	rm -rf .keel
