# Set-up and everyday commands. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adapterkit-installed

.PHONY: venv demo test lint bench adapters-venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m ruff check adapterkit tests bench examples scripts
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check adapterkit tests bench examples scripts

bench: $(STAMP)
	$(PY) bench/suite.py

# AdapterHub's adapters pins an older transformers: it gets its own venv, which bench/suite.py
# uses when present (ADAPTERS_PYTHON overrides its interpreter)
ADAPTERS_VENV ?= .venv-adapters
adapters-venv:
	test -x $(ADAPTERS_VENV)/bin/python || $(PYTHON) -m venv $(ADAPTERS_VENV)
	$(ADAPTERS_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(ADAPTERS_VENV)/bin/pip install -q "adapters==1.3.0" safetensors

clean:
	rm -rf $(VENV) $(ADAPTERS_VENV) build *.egg-info
