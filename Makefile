# `make serve` and `make test` work on a fresh machine: they create the virtualenv,
# install the project, then serve or test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: on a machine with an NVIDIA driver (nvidia-smi on the PATH) PyPI's build, which
# is the CUDA one; elsewhere the CPU build from PyTorch's CPU wheel index (a few hundred MB
# instead of several GB), or from pip's own sources (find-links, a local index) when they
# hold it, as on the development and CI machines, which then need no internet.
# Override either: make install TORCH_VERSION=2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_VERSION ?= 2.13.0
CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH_INDEX ?= $(if $(CUDA),,https://download.pytorch.org/whl/cpu)
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
ARGS ?=

.PHONY: install serve test lint fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned, so resolving the rest never pulls another (multi-GB) build
	$(if $(CUDA),false,$(BIN)/python -m pip install --quiet --no-deps --no-index \
	    torch==$(TORCH_VERSION)+cpu 2>/dev/null) \
	  || $(BIN)/python -m pip install --quiet --no-deps torch==$(TORCH_VERSION) \
	    $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[test]' torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ./client torch==$(TORCH_VERSION)
	touch $@
	@echo "installed into $(VENV): '. $(BIN)/activate' puts darkroom on your PATH"

serve: install
	@echo "starting Darkroom: it prints 'Darkroom ready on URL' once its model is loaded"
	$(BIN)/darkroom serve $(ARGS)

lint: install
	$(BIN)/ruff check server pipelines scripts tests client

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(ARGS)

# The fuzz test of `make test`, with more examples per operation.
N ?= 100
fuzz: install
	DARKROOM_FUZZ_EXAMPLES=$(N) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -s tests/api/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
