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

# --no-browser: containers and remote machines have none; Jupyter prints the URL with its token instead.
# --allow-root: containers and cloud notebooks run as root, where Jupyter refuses to start without it.
LAB_FLAGS := --ip 127.0.0.1 --no-browser --notebook-dir . $(if $(filter 0,$(shell id -u)),--allow-root)

lab: venv
	@echo "JupyterLab: open the http://127.0.0.1:...?token=... URL printed below (Ctrl-C stops it)"
	$(VENV)/bin/jupyter lab $(LAB_FLAGS)

clean-cache:
	rm -rf .cache/con2
