# cxrfuse: two entry points for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install cxrfuse with its dependencies

demo: $(STAMP)  ## run the embedded default pipeline end to end
	$(BIN)/cxrfuse demo --out demo-output

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) demo-output .pytest_cache
