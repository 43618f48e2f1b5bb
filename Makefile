# make run   - the whole platform on this machine (embedded PostgreSQL and Redis)
# make test  - every test, against real components
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test debs clean

run: $(VENV)/.run-deps
	$(BIN)/flask --app wsgi serve

test: $(VENV)/.test-deps debs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) .pytest_cache
