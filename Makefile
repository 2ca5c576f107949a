# The two commands: `make run` (serve on the embedded default) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test bench bench-backup lint clean dist appliance-test image image-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/enclave serve --dev

test: $(TEST_STAMP)
	tests/system_packages.sh
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check api schema security storage backup tests bench
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python bench/contacts_read.py $(BENCH_ARGS)

bench-backup: $(TEST_STAMP)
	$(BIN)/python bench/backup_throughput.py $(BENCH_ARGS)

.PHONY: bench-pipeline
bench-pipeline: $(TEST_STAMP)
	$(BIN)/python bench/pipeline_summary.py $(BENCH_ARGS)

# The trusted compiled path vs the ordinary path vs PostGraphile 5 (installed from npm into
# bench/.postgraphile), 20,000 contacts in PostgreSQL; BENCH_ARGS="--contacts 100000" for more.
.PHONY: bench-trusted bench-opcodes
bench-trusted: $(TEST_STAMP)
	$(BIN)/python bench/trusted_path.py $(BENCH_ARGS)

# Load-independent: Python opcodes per trusted read (compare two versions of the code).
bench-opcodes: $(TEST_STAMP)
	$(BIN)/python bench/trusted_opcodes.py $(BENCH_ARGS)

# The machine's own latency floor at 20 connections: a do-nothing server (fixed CPU per request,
# no database) served and driven as bench-trusted serves and drives Enclave.
.PHONY: bench-floor
bench-floor: $(TEST_STAMP)
	$(BIN)/python bench/latency_floor.py $(BENCH_ARGS)

# This checkout's trusted read against other revisions, side by side in one run (BENCH_ARGS=
# "--rev REV"): the way to see what a change does on a shared, noisy machine.
.PHONY: bench-ab
bench-ab: $(TEST_STAMP)
	$(BIN)/python bench/trusted_ab.py $(BENCH_ARGS)

# The wheelhouse the appliance installs from, offline: Enclave's wheel and every dependency's, for
# the Python of the machine that runs this (Debian 12's 3.11 on x86-64 for the appliance).
dist: $(BIN)/python
	rm -rf dist $(filter-out build/image,$(wildcard build/*))
	$(BIN)/pip wheel --quiet --disable-pip-version-check --wheel-dir dist .
	@ls dist/enclave-*.whl

# As root: a Debian 12 root file system provisioned by appliance/ansible through the chroot
# connection, checked, provisioned again (must change nothing), and ansible-lint.
appliance-test: $(TEST_STAMP) dist
	tests/appliance/run.sh

# As root: the bootable disk image build/image/disk.raw (GPT, EFI system partition, ext4 root) from
# the same root file system and roles; IMAGE_VARS names the YAML file of Ansible variables (admin
# users and their keys, networks). IMAGE_ZSTD=1 adds disk.raw.zst. See docs/operations.md.
image: dist
	appliance/image/build.sh

# As root: the image with a throwaway admin key, booted under QEMU/OVMF with TCG, checked over
# HTTPS and SSH forwarded to loopback (about 10 minutes).
image-test: dist
	tests/appliance/image_test.sh

clean:
	rm -rf $(VENV) build *.egg-info

# As root: the image's root file system (as make image builds it) scanned in a throwaway overlay
# with OpenSCAP (ssg-debian 0.1.76, ANSSI-BP-028 minimal/intermediary/enhanced/high) and Lynis;
# reports in reports/hardening. HARDENING_SCAN_VM=1 also scans the booted image (slow under TCG;
# HARDENING_SCAN_VM_PROFILES="enhanced" to scan only some profiles there, Lynis runs first).
# See docs/hardening.md.
.PHONY: hardening-scan
hardening-scan: dist
	tests/appliance/hardening_scan.sh
