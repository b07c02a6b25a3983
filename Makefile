# `make serve` and `make test` work on a fresh machine: they create the virtualenv,
# install the project, then serve or test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of this version lies on the development and CI machines' disk; on a CUDA
# machine pip fetches the CUDA build of the same version.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
ARGS ?=

.PHONY: install serve test lint fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned, so resolving the rest never pulls another (multi-GB) build
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[test]' torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ./client torch==$(TORCH_VERSION)
	touch $@

serve: install
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
