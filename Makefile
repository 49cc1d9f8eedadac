# runbook.ops — set-up, demo and the whole test suite. Run as root on Debian/Ubuntu (apt is used).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       ?= .venv
PY         := $(VENV)/bin/python
BIN        := $(VENV)/bin
PIP        := $(VENV)/bin/pip
COLLECTIONS := $(CURDIR)/collections
INSTALLED  := $(COLLECTIONS)/ansible_collections/runbook/ops
DEMO_DIR   ?= $(CURDIR)/.demo
FLEET_DIR  ?= $(CURDIR)/.fleet
SANITY_ROOT ?= /tmp/runbook-ops-sanity
APT_PACKAGES := postgresql postgresql-contrib redis-server docker.io busybox-static zstd pigz rsync python3-venv \
                debootstrap apt-cacher-ng openssh-client
# Collections the roles use, taken from the PyPI package `ansible` (Galaxy is not reachable from these machines).
COMMUNITY  := community/postgresql community/docker community/library_inventory_filtering_v1 ansible/posix
ANSIBLE_PKG ?= ansible>=12,<13
PYTEST_WORKERS ?= 2
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_NOCOLOR := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MOLECULE_PYTHON := $(CURDIR)/$(VENV)/bin/python
export NO_COLOR := 1

.PHONY: help deps apt venv install demo demo-down demo-fleet demo-fleet-down test unit-integration unit integration sanity lint doc molecule bench clean

help:
	@echo "make demo   set up everything, start local PostgreSQL/Redis/S3 on loopback, run playbooks/site.yml"
	@echo "make test   set up everything and run the whole suite (unit, integration, sanity, lint, docs, molecule)"
	@echo "make demo-fleet  the same job over SSH on a fleet of systemd hosts in containers (db1, cache1, app1, app2)"
	@echo "make bench  run the benchmarks (not part of CI)"

deps: apt venv

apt: .deps/apt.stamp
.deps/apt.stamp: Makefile
	@mkdir -p .deps
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing apt packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements.txt requirements-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

install: deps $(COLLECTIONS)/.community.stamp
	@rm -rf $(CURDIR)/.deps/build && mkdir -p $(CURDIR)/.deps/build
	$(BIN)/ansible-galaxy collection build --force --output-path $(CURDIR)/.deps/build . >/dev/null
	$(BIN)/ansible-galaxy collection install --no-deps --force -p $(COLLECTIONS) $(CURDIR)/.deps/build/runbook-ops-*.tar.gz >/dev/null
	@echo "Installed runbook.ops into $(COLLECTIONS)"

$(COLLECTIONS)/.community.stamp: Makefile
	@mkdir -p $(CURDIR)/.deps/wheels $(COLLECTIONS)/ansible_collections
	@ls $(CURDIR)/.deps/wheels/ansible-*.whl >/dev/null 2>&1 || $(PIP) download --quiet --no-deps -d $(CURDIR)/.deps/wheels "$(ANSIBLE_PKG)"
	@for c in $(COMMUNITY); do rm -rf $(COLLECTIONS)/ansible_collections/$$c; done
	@cd $(COLLECTIONS) && $(CURDIR)/$(PY) -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  z.extractall('.', [n for n in z.namelist() if n.startswith(tuple('ansible_collections/%s/' % c for c in sys.argv[2:]))])" \
	  $$(ls $(CURDIR)/.deps/wheels/ansible-*.whl | head -1) $(COMMUNITY)
	@touch $@
	@echo "Installed $(COMMUNITY) from $(ANSIBLE_PKG) into $(COLLECTIONS)"

demo: install
	$(PY) tests/harness/servers.py up --state-dir $(DEMO_DIR)
	$(BIN)/ansible-playbook -i inventories/local playbooks/site.yml

demo-down:
	$(PY) tests/harness/servers.py down --state-dir $(DEMO_DIR)

# The fleet stays up afterwards (make demo-fleet-down stops it); a second run of site.yml changes nothing.
demo-fleet: install
	$(PY) tests/harness/fleet.py up --state-dir $(FLEET_DIR)
	$(BIN)/ansible-playbook -i inventories/fleet -i $(FLEET_DIR)/inventory.yml playbooks/site.yml -e backup_run_now=true

demo-fleet-down:
	$(PY) tests/harness/fleet.py down --state-dir $(FLEET_DIR)

test: install unit-integration sanity lint doc molecule
	@echo "make test: all suites passed"

unit-integration:
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15 tests/unit tests/integration

unit:
	$(BIN)/pytest tests/unit

integration:
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup tests/integration

# ansible-test fetches a pip bootstrap script from a host these machines cannot reach: seed its cache.
sanity: install
	@mkdir -p $$HOME/.ansible/test/cache
	@cp .ci/ansible_test_get_pip.py $$HOME/.ansible/test/cache/get_pip_24_2.py
	@# Outside this git checkout: inside it ansible-test lists files with git, which ignores collections/, and skips all.
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	$(BIN)/ansible-galaxy collection install --force -p $(SANITY_ROOT) $(CURDIR)/.deps/build/runbook-ops-*.tar.gz >/dev/null
	cd $(SANITY_ROOT)/ansible_collections/runbook/ops && $(CURDIR)/$(BIN)/ansible-test sanity --venv --requirements \
	  --python 3.11 --color no 2>&1 | tee $(CURDIR)/.deps/sanity.log; test $${PIPESTATUS[0]} -eq 0
	@! grep -q "All targets skipped" .deps/sanity.log || { echo "ansible-test found nothing to test"; exit 1; }
	@grep -c '^Running sanity test' .deps/sanity.log | xargs -I{} echo "ansible-test sanity: {} tests ran"

lint: install
	@# a stale copy of this collection in ~/.ansible/collections would shadow collections/
	@rm -rf $(HOME)/.ansible/collections/ansible_collections/runbook
	$(BIN)/ansible-lint --offline --profile production

doc: install
	@for m in plugins/modules/*.py; do n=$$(basename $$m .py); \
	  out=$$($(BIN)/ansible-doc runbook.ops.$$n 2>&1) || { echo "$$out"; exit 1; }; \
	  echo "$$out" | grep -q "MODULE runbook.ops.$$n" || { echo "ansible-doc did not render runbook.ops.$$n:"; echo "$$out"; exit 1; }; \
	  echo "ansible-doc runbook.ops.$$n renders"; done

# The docker-driver scenarios start their hosts on the fleet harness's private engine and network (fleet.env); two
# lanes run side by side (each scenario's log is in $(MOLECULE_DIR)); the engine is stopped even when one fails.
# Each scenario starts from a fresh ephemeral directory (no stale "prepared" state). Not `molecule reset`: it stops
# every molecule container on the engine, the other lane's too.
MOLECULE_DIR ?= $(CURDIR)/.deps/molecule
MOLECULE_LANE_A := fleet backup health_check
MOLECULE_LANE_B := host_deps postgresql redis docker
molecule: install
	@for s in molecule/*/molecule.yml; do s=$$(basename $$(dirname $$s)); \
	  case " $(MOLECULE_LANE_A) $(MOLECULE_LANE_B) " in *" $$s "*) ;; *) echo "scenario $$s is in no lane"; exit 1;; esac; done
	@$(PY) tests/harness/fleet.py up --engine-only --state-dir $(MOLECULE_DIR)
	@set -a; . $(MOLECULE_DIR)/fleet.env; set +a; \
	  lane() { for s in "$$@"; do rm -rf $(MOLECULE_DIR)/ephemeral/$$s; \
	    if MOLECULE_EPHEMERAL_DIRECTORY=$(MOLECULE_DIR)/ephemeral/$$s $(BIN)/molecule test -s $$s \
	      > $(MOLECULE_DIR)/$$s.log 2>&1; then echo "molecule $$s: passed"; \
	    else echo "molecule $$s: FAILED"; tail -80 $(MOLECULE_DIR)/$$s.log; return 1; fi; done; }; \
	  lane $(MOLECULE_LANE_A) & a=$$!; lane $(MOLECULE_LANE_B) & b=$$!; \
	  wait $$a; sa=$$?; wait $$b; sb=$$?; \
	  $(PY) tests/harness/fleet.py down --state-dir $(MOLECULE_DIR); test $$sa -eq 0 -a $$sb -eq 0

bench: install
	@test -d $(CURDIR)/.deps/bench-ansible/ansible_collections/community/postgresql || \
	  $(PIP) install --quiet --no-deps --target $(CURDIR)/.deps/bench-ansible "ansible>=12,<13"
	@for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean: demo-down demo-fleet-down
	rm -rf $(VENV) collections .deps tests/output .pytest_cache
