# Two entry points (see README "Quickstart"):
#   make demo   set up, then train (quick presets) -> export -> register + promote -> serve
#   make test   set up, then run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export RNNOPS_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

# constraints.txt pins the whole resolved set: reproducible installs, no resolver backtracking.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns checkpoints
