# Two commands for a newcomer: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
DEMO_DIR ?= motex-demo

.PHONY: demo test venv install clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python venv module missing: installing Debian's python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python

# A regular (non-editable) install, so that the demo and the tests run what users install.
install: venv
	$(BIN)/python -m pip install -q .

demo: install
	$(BIN)/motex-db demo --dir $(DEMO_DIR)

test: venv
	$(BIN)/python -m pip install -q ".[test]"
	$(BIN)/pytest

clean:
	rm -rf build *.egg-info $(DEMO_DIR)
