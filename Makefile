# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.14.1 torchvision==0.29.1
TORCHATTACKS := torchattacks==3.5.1

.PHONY: demo test lint format venv clean-venv

venv: $(STAMP)

# Quick when the venv already exists: the stamp is only remade when pyproject.toml changes.
# torchattacks pins requests~=2.25.1, which breaks resolvers: it is installed alone with --no-deps, and its
# real imports (torch, torchvision, numpy, scipy, tqdm) come from pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q --no-deps $(TORCHATTACKS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robustcaps reproduce --preset quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check robustcaps tests benchmarks
	$(BIN)/ruff format --check robustcaps tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format robustcaps tests benchmarks
	$(BIN)/ruff check --fix robustcaps tests benchmarks

clean-venv:
	rm -rf $(VENV)
