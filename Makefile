# Each target creates .venv when it is missing and installs what it needs from PyPI.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench export lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,viz,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) bench/attention.py
	$(PY) bench/reference_memory.py
	$(PY) bench/decode.py
	$(PY) bench/window.py

export: $(STAMP)
	rm -f exported/*.onnx exported/MANIFEST.json
	for f in examples/[a-z]*.py; do [ $$f = examples/demo.py ] || $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(PY) -m pip install -q ruff mypy
	$(PY) -m ruff check attngraph tests
	$(PY) -m mypy attngraph

clean:
	rm -rf $(VENV) build *.egg-info
