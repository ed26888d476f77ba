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
	$(PIP) install -q --no-build-isolation -e '.[train,cli,dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with the operator, trainer, CLI and test dependencies

.PHONY: test
test: install cluster-build kueue-build prometheus ## Run the test suite except the real-node tests and the chaos suite (builds/starts what the tests need, Kueue included)
	$(PY) -m pytest --ignore=tests/e2e --ignore=tests/chaos $(PYTEST_ARGS)

.PHONY: chaos
chaos: install cluster-build ## The operator SIGKILLed at restart boundaries and 50x during a 200-job burst, leadership moved 20x; prints the figures
	$(PY) -m pytest tests/chaos -s $(CHAOS_ARGS)

.PHONY: e2e
e2e: install cluster-build node-deps ## The whole product on a real node (root): images from our Dockerfiles, chart, 2-pod LoRA job
	$(PY) -m pytest tests/e2e $(E2E_ARGS)

.PHONY: node-deps
node-deps: ## Install Debian's containerd, runc, CNI plugins, iptables, debootstrap, docker.io (idempotent)
	bash hack/install-node-deps.sh

.PHONY: images
images: node-deps ## Build the operator and trainer (CPU) images from our Dockerfiles, no registry (cached)
	bash hack/build-images.sh

.PHONY: prometheus
prometheus: ## Install Debian's prometheus package for the scraping tests (idempotent)
	bash hack/install-prometheus.sh

.PHONY: lint
lint: install ## ruff + mypy --strict (layering is checked by tests/operator/test_layering.py)
	$(VENV)/bin/ruff check operator trainer_image cli tests bench hack
	$(VENV)/bin/mypy operator/finetune_operator trainer_image/finetune_trainer cli/ftctl

.PHONY: cluster-build
cluster-build: ## Build etcd/kube-*/kubectl/kwok/helm from Go modules into ~/.cache/finetune-operator (skips what is built)
	bash hack/build-control-plane.sh

.PHONY: kueue-build
kueue-build: ## Build Kueue's manager (sigs.k8s.io/kueue v0.17.0) + copy its CRDs/webhooks into ~/.cache/finetune-operator (skips what is built)
	bash hack/build-kueue.sh

.PHONY: cluster-up
cluster-up: install cluster-build ## Start a background control plane; writes .cluster/admin.kubeconfig
	$(PY) -m tests.cluster up

.PHONY: cluster-down
cluster-down: install ## Stop the control plane started by cluster-up
	$(PY) -m tests.cluster down

.PHONY: demo
demo: install ## Fine-tune MiniLM on the bundled sentiment data on this CPU (ftctl run --local, local S3 server)
	$(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: crds
crds: install ## Regenerate crds/ from the pydantic models in operator/finetune_operator/api.py (tests fail on drift)
	$(PY) -m finetune_operator.crdgen crds/

.PHONY: chart-crds
chart-crds: install ## Copy crds/ into charts/finetune-operator/files/crds (templates/crds.yaml; tests fail when they drift)
	$(PY) hack/sync_chart_crds.py

.PHONY: chart-lint
# The chart requires both images (none is published); lint and render it with placeholders.
CHART_IMAGES = --set image.repository=registry.example.com/finetune-operator,trainerImage=registry.example.com/finetune-trainer:0.1.0
chart-lint: install cluster-build ## helm lint --strict + helm template of the chart, and the CRD drift check
	$(PY) hack/sync_chart_crds.py --check
	"$$(bash hack/build-control-plane.sh --print-bin)/helm" lint --strict charts/finetune-operator $(CHART_IMAGES)
	"$$(bash hack/build-control-plane.sh --print-bin)/helm" template ftop charts/finetune-operator --include-crds --kube-version 1.34.0 $(CHART_IMAGES) > /dev/null
