# Every target installs what it needs first; installing twice is a no-op.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install system-deps run dev test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "Installing Keel and its dependencies (llama-cpp-python builds from source the first time: ~5 min)"
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian packages, installed only when missing: Java 17 (a JDK: the Neo4j launcher is
# compiled) and Maven, which fetches Neo4j's jars from Maven Central for the graph tests;
# bubblewrap and Debian's python3, the sandbox and the interpreter in it; PostgreSQL, the
# database the tests give `sql_query`; Chromium and its chromedriver, the headless browser
# that tests the Temporal Web UI (tests/test_web_ui.py).
SYSTEM_PACKAGES := openjdk-17-jdk-headless maven bubblewrap python3 postgresql \
	chromium chromium-driver
system-deps:
	@command -v javac >/dev/null && command -v mvn >/dev/null && command -v bwrap >/dev/null \
		&& test -x /usr/bin/python3 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		&& test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
		echo "Installing Debian packages: $(SYSTEM_PACKAGES)"; \
		apt-get update -q && apt-get install -y -q $(SYSTEM_PACKAGES); }

run: $(STAMP) system-deps  ## run one default task end to end on the embedded stack
	$(BIN)/keel run

dev: $(STAMP) system-deps  ## Temporal dev server (UI on :8233) + every worker, until Ctrl-C
	$(BIN)/keel dev

test: $(STAMP) system-deps
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
	$(BIN)/python bench/memory.py --quick
	$(BIN)/python bench/sandbox.py --quick

clean:
	rm -rf .keel
