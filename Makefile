# Each target creates .venv when it is missing and installs what it needs from PyPI.
# `make test PYTHON=python3.13` runs the suite under another interpreter in its own .venv-3.13.
PYTHON ?= python3
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV   ?= $(if $(filter command line environment,$(origin PYTHON)),.venv-$(PYVER),.venv)
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MIN    := .venv-min-$(PYVER)

.PHONY: demo test test-min bench export lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,viz,bench]"
	touch $(STAMP)

# The suite against the oldest versions pyproject.toml allows (pinned in .ci/min-versions.txt,
# per Python), in a fresh virtual environment each time. onnxruntime-genai needs a newer
# onnxruntime than the core does, so the genai extra and its tests are left to `make test`.
# Python 3.10 (onnxruntime 1.23.2): `make test PYTHON=python3.10` and
# `make test-min PYTHON=python3.10`.
test-min:
	rm -rf $(MIN)
	$(PYTHON) -m venv $(MIN)
	$(MIN)/bin/python -m pip install -q --upgrade pip
	$(MIN)/bin/python -m pip install -q -c .ci/min-versions.txt -e ".[viz,quantize,serve]" \
	    "pytest>=8" "hypothesis>=6.100" "pytest-xdist>=3.5"
	$(MIN)/bin/python -m pip list 2>/dev/null | grep -iE "^(numpy|onnx|onnxruntime|networkx|safetensors|tqdm) "
	$(MIN)/bin/python -m pytest -n 2 tests --ignore=tests/test_genai.py

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) bench/attention.py
	$(PY) bench/reference_memory.py
	$(PY) bench/decode.py
	$(PY) bench/quantize.py --modes fp32,int4
	$(PY) bench/streaming.py
	$(PY) bench/export.py
	$(PY) bench/window.py

export: $(STAMP)
	rm -f exported/*.onnx exported/MANIFEST.json
	for f in examples/[a-z]*.py; do [ $$f = examples/demo.py ] || $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(PY) -m pip install -q ruff mypy
	$(PY) -m ruff check attngraph tests bench
	$(PY) -m mypy attngraph

clean:
	rm -rf .venv .venv-[0-9]* .venv-min-* build *.egg-info
