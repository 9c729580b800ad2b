# Two entry points (see README "Quickstart"):
#   make demo   set up, then train (quick presets) -> export -> register + promote -> serve
#   make test   set up, then run the test suite (what CI runs)
# and `make check` (half a minute once its venv exists): lint, format, types, the fast serving tests without torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export RNNOPS_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup system-deps check test demo bench clean images stack-test

setup: $(VENV)/.installed

# constraints.txt pins the whole resolved set: reproducible installs, no resolver backtracking.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $@

# PostgreSQL (the production-shape tests run a real mlflow server on it), Java 17 (Spark),
# Redis (the shared forecast-session store) and Chromium with its WebDriver (the playground's
# browser tests).
# Needs root or sudo; without them those tests skip with the reason (CI=true makes them fail).
system-deps:
	bash scripts/install_postgres.sh || echo "warning: PostgreSQL not installed: production tests will skip"
	bash scripts/ensure_java.sh || echo "warning: no Java 17: Spark tests will skip"
	bash scripts/install_redis.sh || echo "warning: no redis-server: the shared session store tests will skip"
	bash scripts/install_chromium.sh || echo "warning: no chromium + chromium-driver: the playground browser tests will skip"

# The check venv has the serve extra alone, as the serving image does (no torch, no onnx): the fast
# serving tests (tests/conftest.py FAST, --fast) serve the tiny ONNX files of tests/assets/ there.
CHECK_VENV ?= .venv-check
CPY := $(CHECK_VENV)/bin/python
TYPES := build/types

$(CHECK_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CPY) -m pip install -q --upgrade pip
	$(CPY) -m pip install -q -c constraints.txt -e '.[serve,check]'
	touch $@

# mypy finds a package's modules in its folder, and rnnops.registry/serving live outside rnnops/
# (pyproject's package-dir): it reads them through $(TYPES), links laid out like the installed package.
check: $(CHECK_VENV)/.installed
	$(CPY) -m ruff check .
	$(CPY) -m ruff format --check .
	rm -rf $(TYPES) && mkdir -p $(TYPES)/rnnops
	ln -s $(abspath rnnops)/*.py $(TYPES)/rnnops/
	ln -s $(abspath registry) $(abspath serving) $(TYPES)/rnnops/
	cd $(TYPES) && MYPYPATH=. $(abspath $(CPY)) -m mypy --config-file $(abspath pyproject.toml) --cache-dir $(abspath .mypy_cache) -p rnnops
	$(CPY) -m pytest --fast -q -p no:cacheprovider --timeout 120

test: setup system-deps
	$(PY) -m pytest

# The benchmark suite (docs/benchmarks.md, and the M4 Hourly table of docs/forecasting.md); `wrk`
# drives the HTTP figure. Run it on a quiet machine. `make bench BENCH_ARGS=--skip-venv-builds`
# uses the peers' virtualenvs already made (~/.cache/rnnops/peers) and builds none.
bench: setup
	bash scripts/install_wrk.sh || echo "warning: no wrk: the HTTP figure falls back to a Python client"
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The three images of docker-compose.yml, built with podman on a local Debian base (no registry
# needed; RNNOPS_BASE_IMAGE=python:3.11-slim-bookworm to pull the usual one), with their sizes.
images:
	bash scripts/build_images.sh

# The compose stack end to end with podman-compose (tests/test_stack.py): PostgreSQL, MLflow,
# Redis, serving; train + promote on the host; the Bento image too. CI runs it after `make test`.
stack-test: setup images
	bash scripts/stack_test.sh

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

clean:
	rm -rf $(VENV) $(CHECK_VENV) $(TYPES) mlflow.db mlartifacts mlruns checkpoints
