# make quickstart | make test | make ui | make lab
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv quickstart test ui lab clean-cache

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(VENV)/bin/con2 run params/quickstart.yaml

test: venv
	$(PY) -m pytest -q

ui: venv
	$(VENV)/bin/con2 ui

lab: venv
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --notebook-dir .

clean-cache:
	rm -rf .cache/con2
