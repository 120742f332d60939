# The two commands of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
DEMO_BIDS := demo_data/bids

.PHONY: install slurm-packages atlas-packages demo test test-slow lint format clean

install: $(STAMP) atlas-packages

# torch==2.13.0 first: a CPU wheel here; an unpinned torch would pull the CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Regenerated when its generator changes (a demo left from an older generator would
# train on data the defaults were not chosen for).
$(DEMO_BIDS)/dataset_description.json: $(wildcard workflow/bidstrain/demo/*.py) | $(STAMP)
	rm -rf $(DEMO_BIDS)
	$(VENV)/bin/bidstrain-demo $(DEMO_BIDS)

demo: $(STAMP) $(DEMO_BIDS)/dataset_description.json
	$(VENV)/bin/snakemake --profile profiles/default --cores $(CORES) all
	$(VENV)/bin/snakemake --profile profiles/default --report results/report.html

# Debian's munge, slurmctld, slurmd and slurm-client for the real SLURM tests (apt-get, as
# root; nothing is installed when they are there). The tests start the cluster themselves.
slurm-packages:
	bash tests/slurm_cluster.sh install

# Debian's mricron-data: real atlases offline (AICHA and AAL in MNI space), which the parcel
# tests read from /usr/share/mricron/templates (apt-get, as root; nothing is installed when
# it is there).
ATLAS_PACKAGES := mricron-data
atlas-packages:
	@dpkg-query -W -f='$${Status}' $(ATLAS_PACKAGES) 2>/dev/null | grep -q "install ok installed" \
		|| (export DEBIAN_FRONTEND=noninteractive \
		&& apt-get -qq -o DPkg::Lock::Timeout=300 update >/dev/null \
		&& apt-get -qq -o DPkg::Lock::Timeout=300 install -y $(ATLAS_PACKAGES) >/dev/null)

# Two pytest workers (pytest-xdist): while the SLURM tests wait on the cluster's jobs, the
# other worker runs the unit tests. The SLURM and demo_run tests share one worker (see
# WORKFLOW_FILES in tests/conftest.py); every other file is a unit of its own.
# `make test`: every test but the slowest (marked `slow`, a minute or more each), which
# `make test-slow` runs; CI runs both.
PYTEST := $(PY) -m pytest -q -n 2 --no-loadscope-reorder

test: $(STAMP) slurm-packages atlas-packages
	$(PYTEST) -m "not slow" tests

test-slow: $(STAMP) slurm-packages atlas-packages
	$(PYTEST) -m slow tests

lint: $(STAMP) $(DEMO_BIDS)/dataset_description.json
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check workflow/Snakefile workflow/rules
	# SLURM_CONF=/dev/null: the SLURM plugin's help text asks scontrol, which waits 10 s for
	# a controller when none answers; the lint does not use SLURM.
	SLURM_CONF=/dev/null $(VENV)/bin/snakemake --lint --configfile config/config.yaml

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/snakefmt workflow/Snakefile workflow/rules

clean:
	rm -rf results/* .snakemake
