# One venv for everything; created and filled from pyproject.toml on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= configs/default.toml
Q       ?= how do I create a virtual environment
K       ?= 5

.PHONY: embed index search ask test test-ray test-integration lint bench emulator clean help

help:
	@echo "make embed | search Q='...' | ask Q='...' | index | test | test-ray | test-integration | lint | bench | emulator | clean"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

embed: $(STAMP)
	$(BIN)/pipeline embed --config $(CONFIG)

index: $(STAMP)
	$(BIN)/pipeline index --config $(CONFIG)

search: $(STAMP)
	$(BIN)/pipeline search --config $(CONFIG) -k $(K) "$(Q)"

ask: $(STAMP)
	$(BIN)/pipeline ask --config $(CONFIG) "$(Q)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray"

# The Ray engine on a two-node Ray cluster the tests start on this machine (tests/cluster): installs the ray extra.
test-ray: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	PIPELINE_REQUIRE_RAY=1 $(BIN)/python -m pytest -q -m ray tests/cluster

# LiteLLM proxy in front of the emulator (the seed's model_list): heavy, so it gets its own venv and target.
LITELLM_VENV := .venv-litellm
$(LITELLM_VENV)/.installed:
	test -x $(LITELLM_VENV)/bin/python || $(PY) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==1.108.7'
	touch $@

test-integration: $(STAMP) $(LITELLM_VENV)/.installed
	LITELLM_BIN=$(CURDIR)/$(LITELLM_VENV)/bin/litellm $(BIN)/python -m pytest -q tests/providers/test_openai_compat_litellm.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py $(BENCH)

emulator: $(STAMP)
	$(BIN)/pipeline emulator --port 8765

clean:
	rm -rf out .pytest_cache
