# make run   - the whole platform on this machine (embedded PostgreSQL and Redis)
# make test  - every test, against real components
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The model engine (vLLM, CPU build) lives in a virtualenv of its own: hosts are other machines.
ENGINE_VENV ?= .venv-engine

.PHONY: run test debs engine-venv clean

run: $(VENV)/.run-deps engine-venv
	$(BIN)/flask --app wsgi serve

test: $(VENV)/.test-deps debs engine-venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

engine-venv:
	PYTHON=$(PYTHON) scripts/make-engine-venv.sh $(ENGINE_VENV)

$(VENV)/bin/python:
	scripts/make-venv.sh $(PYTHON) $(VENV)

$(VENV)/.run-deps: requirements.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-dev.txt $(VENV)/.run-deps
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

debs:
	scripts/install-debs.sh $(shell cat debian-packages.txt | grep -v '^#')

clean:
	rm -rf $(VENV) $(ENGINE_VENV) .pytest_cache
