# Makefile: every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e '.[train,dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with the operator, trainer, CLI and test dependencies

.PHONY: test
test: install cluster-build ## Run the whole test suite (builds/starts what the tests need)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff + mypy --strict + import-linter layering
	$(VENV)/bin/ruff check operator trainer_image cli tests bench
	$(VENV)/bin/mypy operator/finetune_operator trainer_image/finetune_trainer cli/ftctl

.PHONY: cluster-build
cluster-build: ## Build etcd/kube-*/kubectl/kwok/helm from Go modules into ~/.cache/finetune-operator (skips what is built)
	bash hack/build-control-plane.sh

.PHONY: cluster-up
cluster-up: install cluster-build ## Start a background control plane; writes .cluster/admin.kubeconfig
	$(PY) -m tests.cluster up

.PHONY: cluster-down
cluster-down: ## Stop the control plane started by cluster-up
	$(PY) -m tests.cluster down
