# `make test` and `make demo` set everything up on a fresh machine: the virtualenv in .venv is
# (re)built from setup.py's pins whenever it is missing or older than setup.py.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): setup.py
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -p no:warnings --durations=15 tests

# The whole method on the synthetic family with a tiny T5 (see hypert5/demo.py); writes
# demo_out/table.json, demo_out/tuning_curves.png and demo_out/adapter/.
demo: $(STAMP)
	$(PY) -m hypert5.demo

clean:
	rm -rf $(VENV)
