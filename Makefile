# Front door of the project. `make iso` builds every artifact; `make test` runs the default suite.
# Each stage prints what it does and how long it took (scripts/stage).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export ELEMENTAL_CACHE ?= /var/cache/elemental-py
export ELEMENTAL_STATE ?= /var/lib/elemental-py
export OUT ?= $(CURDIR)/out
# REGISTRATION: a file or URL of a registration file to embed in the ISO (default: the dev operator's).
export REGISTRATION ?=
export OS_VERSION ?= 0.1.0
STAGE := scripts/stage

.PHONY: all setup host venv iso os seed operator-image repack vm test unit integration lint e2e bench clean

all: iso

## setup: host packages (apt, bookworm-backports), then the Python venv, which builds against
## them (tpm2-pytss needs libtss2-dev); idempotent, and seconds on a second run
setup: venv

host:
	@$(STAGE) "host packages" scripts/setup-host.sh

# `| host`: the host packages are installed before the venv is built, also under make -j.
$(VENV)/.installed: pyproject.toml | host
	@$(STAGE) "python venv" bash -c '$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q -U pip && $(PY) -m pip install -q -e ".[operator,dev]"'
	@touch $@

venv: host $(VENV)/.installed

## iso: every artifact (OS OCI + raw disk, seed ISO + PXE files, operator image). The three
## images build at once (IMAGE_JOBS=1 for one at a time): each spends much of its time in
## single-threaded steps (tar, gzip, cpio), so on 2 cores they overlap well.
IMAGE_JOBS ?= 3
iso: setup
	@$(MAKE) --no-print-directory -j$(IMAGE_JOBS) os seed operator-image
	@$(MAKE) --no-print-directory repack

## os / seed / operator-image: one image each (mkosi, incremental)
os seed operator-image: setup
	@$(STAGE) "image $@" $(PY) -m imagebuild $@

## repack: (re)pack the seed ISO and PXE files, and publish the ISO as the OCI seed image
## $(OUT)/seed-image (/elemental-iso/seed.iso: the operator's default SeedImage base); seconds
repack: setup
	@$(STAGE) "seed iso" $(PY) -m iso.pack
	@$(STAGE) "seed image" $(PY) -m iso.seedimage

## vm: boot $(OUT)/seed.iso in QEMU + swtpm against the dev operator (started if none runs) and
## watch a machine register, install and turn Ready; the next call boots its installed disk.
## NAME=m2: another machine; FRESH=1: start it over. Disk, TPM, firmware vars and logs stay in
## $(ELEMENTAL_STATE)/vms/<name>/. The driver is tests/make_vm.py, on the VM test harness.
VM_NAME := $(if $(filter command line,$(origin NAME)),$(NAME),m1)
vm: venv
	@$(STAGE) "vm $(VM_NAME)" $(PY) tests/make_vm.py --name '$(VM_NAME)' $(if $(filter 1 yes true,$(FRESH)),--fresh)

## test: the README's test command (and CI's): lint and the unit tier first, so a broken unit
## fails in minutes; then the images, then every other tier (integration, vm, e2e chain).
test: setup lint unit iso
	@$(STAGE) "tests (integration, vm, e2e)" $(PY) -m pytest -q --durations=25 -m "not unit" tests

## unit: the unit tier (no root, no VM, no images); seconds
unit: venv
	@$(STAGE) "unit tests" $(PY) -m pytest -q -m unit tests

## integration: real swtpm, SQLite, PostgreSQL, loop devices; no VM (needs root for some)
integration: venv
	@$(STAGE) "integration tests" $(PY) -m pytest -q -m integration tests

## lint: ruff, mypy, and the layer contract (.importlinter: operator and machine side depend on
## elemental_common, never on each other; no test code in the product)
lint: venv
	@$(STAGE) "ruff" $(VENV)/bin/ruff check elemental_common elemental_register elemental_operator iso imagebuild tests bench
	@$(STAGE) "mypy" $(VENV)/bin/mypy elemental_common elemental_register elemental_operator iso imagebuild bench tests \
		--exclude '^tests/e2e/conftest\.py$$'
	@# a second run: two conftest.py files are two modules named `conftest` to one mypy run
	@$(STAGE) "mypy (e2e conftest)" $(VENV)/bin/mypy tests/e2e/conftest.py
	@$(STAGE) "layer contract" $(VENV)/bin/lint-imports

## e2e: the full end-to-end lifecycle suite in QEMU
e2e: iso
	@$(STAGE) "e2e" $(PY) -m pytest -q tests/e2e --run-e2e

## bench: benchmarks; prints tables with ratios against same-run baselines
bench: iso
	@$(STAGE) "bench" $(PY) -m bench

clean:
	rm -rf $(OUT) build results
