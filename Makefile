# make run   - the whole platform on this machine (embedded PostgreSQL and Redis)
# make test  - lint, then every test, against real components
# make test-fast - the tests that need no vLLM, Chromium, root or long run, on every core (under two minutes)
# make lint  - ruff (style, import order) and the import contracts in pyproject.toml
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The model engine (vLLM, CPU build) lives in a virtualenv of its own: hosts are other machines.
ENGINE_VENV ?= .venv-engine
# What the router runs, and hostkit's own requirements: make run's demo host is a hostkit on this machine.
RUN_REQUIREMENTS := requirements.txt hostkit/requirements.txt

.PHONY: run test test-fast lint run-debs debs engine-venv engine-image clean

run: $(VENV)/.run-deps run-debs engine-venv
	$(BIN)/python -m app.dev.serve

test: lint $(VENV)/.test-deps debs engine-venv engine-image
	scripts/run-tests.sh $(BIN)/python $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest -n auto -m "not vllm and not browser and not root and not slow" $(PYTEST_ARGS)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports

engine-venv:
	PYTHON=$(PYTHON) scripts/make-engine-venv.sh $(ENGINE_VENV)

# The engine container's image for podman (hostkit.local.image), built once and cached; as root, with podman.
engine-image: engine-venv
	@if [ "$$(id -u)" = 0 ] && command -v podman >/dev/null; then \
		$(BIN)/python -m hostkit.local.image --venv $(ENGINE_VENV) >/dev/null; fi

$(VENV)/bin/python:
	scripts/make-venv.sh $(PYTHON) $(VENV)

$(VENV)/.run-deps: $(RUN_REQUIREMENTS) | $(VENV)/bin/python
	$(BIN)/pip install --quiet --disable-pip-version-check $(addprefix -r ,$(RUN_REQUIREMENTS))
	touch $@

$(VENV)/.test-deps: requirements-dev.txt $(VENV)/.run-deps
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run-debs:
	scripts/install-debs.sh --optional debian-packages-run.txt

debs:
	scripts/install-debs.sh debian-packages-run.txt debian-packages.txt

clean:
	rm -rf $(VENV) $(ENGINE_VENV) .pytest_cache
