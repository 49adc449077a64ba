# ModelGate: the two commands of the quick start, and a few more.
#   make demo   runs site.yml on the embedded default (inventories/local) and prints the report
#   make test   runs the whole test suite (lint, unit, integration, end to end)
#   make bench  measures the pipeline (stage times, play overhead)
#   make sanity ansible-test sanity on the built collection (make test runs it too)
#   make fresh-demo  runs `make demo` in a fresh Debian 12 container (scripts/fresh-host.sh)
# Each target sets up what it needs: system packages, the controller virtualenv, the
# collection link. The tool virtualenvs are made by the provision stage of site.yml.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
HOME_DIR := $(CURDIR)/.modelgate
VENV := $(HOME_DIR)/venvs/controller
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelgate-controller.stamp
COLLECTION_LINK := $(HOME_DIR)/collections/ansible_collections/modelgate/pipeline
export ANSIBLE_COLLECTIONS_PATH := $(HOME_DIR)/collections
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: demo test lint unit integration provision bench clean-runs teardown bootstrap fresh-demo \
	ee-context ee sanity

bootstrap: $(STAMP) $(COLLECTION_LINK)

# System packages the controller itself needs before Ansible exists: a Python with venv.
# Everything else (podman, skopeo, the registry, the tool virtualenvs) is the provision stage's.
$(STAMP): requirements/controller.txt requirements/controller.lock.txt python/pyproject.toml
	@bash scripts/bootstrap-system.sh "$(PYTHON)"
	@echo ">>> controller virtualenv: $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check \
	    -r requirements/controller.txt -c requirements/controller.lock.txt
	@$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e python
	@touch $@

$(COLLECTION_LINK):
	@mkdir -p $(dir $@)
	@ln -sfn $(CURDIR) $@

# Ends with what was decided, a sentence per candidate, and where the report is; the exit
# status is the play's (a refused candidate fails it: the gate doing its job).
demo: bootstrap
	@touch $(HOME_DIR)/demo.stamp; rc=0; \
	$(BIN)/ansible-playbook site.yml $(DEMO_ARGS) || rc=$$?; \
	echo ""; \
	if [ runs/latest/gate.json -nt $(HOME_DIR)/demo.stamp ]; then \
	  $(BIN)/modelgate verdict runs/latest --text || true; \
	else \
	  echo "The play stopped (exit $$rc) before the gate decided: the failed task above says why."; \
	fi; exit $$rc

# The tool virtualenvs and system packages the tests drive, made by the product's own stage.
provision: bootstrap
	@$(BIN)/ansible-playbook playbooks/provision.yml

teardown: bootstrap
	@$(BIN)/ansible-playbook playbooks/teardown.yml

lint: bootstrap
	@echo ">>> ruff"
	@$(BIN)/ruff check python plugins tests bench
	@echo ">>> ansible-lint (production profile)"
	@$(BIN)/ansible-lint --offline
	@echo ">>> antsibull-changelog lint"
	@$(BIN)/antsibull-changelog lint
	@$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

# ansible-test sanity on the built collection, as Galaxy / Automation Hub run it; `make test`
# runs it (and galaxy-importer on the same tarball) in tests/integration/test_certification.py.
sanity: bootstrap
	@bash scripts/sanity.sh $(SANITY_ARGS)

unit: bootstrap
	@bash scripts/pytest.sh tests/unit $(PYTEST_ARGS)

integration: provision
	@bash scripts/pytest.sh tests/integration $(PYTEST_ARGS)

test: lint provision
	@bash scripts/pytest.sh tests $(PYTEST_ARGS)

# The quick start on a fresh Debian 12 container (debootstrap): set-up and play times, verdict.
fresh-demo: provision
	@bash scripts/fresh-host.sh demo

# The execution environment for AAP (execution-environment.yml): its build context, and the
# image built from it with podman (tag modelgate-ee:<galaxy.yml version>; EE_TAG to change).
ee-context: bootstrap
	@bash scripts/ee-context.sh

ee: ee-context
	@$(BIN)/ansible-builder build -f execution-environment.yml -c $(HOME_DIR)/ee/context \
	    --container-runtime podman -t $${EE_TAG:-modelgate-ee:$$($(BIN)/python -c \
	    'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')}

bench: bootstrap
	@$(BIN)/python bench/pipeline.py

clean-runs:
	rm -rf runs
