# Two commands for a newcomer: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
DEMO_DIR ?= motex-demo
# The suite runs its test files on this many processes (pytest-xdist); most of its time is real
# commands starting up and waiting for each other, so two overlap well even on two cores.
TEST_WORKERS ?= 2

.PHONY: demo test venv install browser clean

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

# The report's browser test needs Debian's chromium; install it where we may (root with apt),
# else that test skips with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will skip"; \
	  else echo "chromium missing and apt unavailable: the browser test will skip"; fi; }

test: venv browser
	$(BIN)/python -m pip install -q ".[test]"
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf build *.egg-info $(DEMO_DIR)
