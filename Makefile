# The two commands of the README: `make demo` and `make test`. Both install what they need.
# `make demo-naturalistic` runs the film, sound and transcript side on a second demo.
# `make validate`, `make report` and `make status` are those of `bidstrain` (docs/
# study-folder.md) for the study of this folder (config/config.yaml: the demo).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
DEMO_BIDS := demo_data/bids
NATURALISTIC := demo_data/naturalistic

# A recipe that fails removes its target (a half-written demo is written again next time).
.DELETE_ON_ERROR:

.PHONY: install slurm-packages atlas-packages demo demo-naturalistic validate report status test test-slow lint format clean

# Every `snakemake` start waits about 10 s where a SLURM client is installed and no
# controller answers: the SLURM executor plugin runs `scontrol show config` while it builds
# its help. Where `scontrol ping` says no controller is up within a second, snakemake runs
# with SLURM_CONF=/dev/null (an empty configuration: scontrol fails at once). Decided once,
# at the first use (bidstrain.cli.slurm decides the same for `bidstrain`).
NO_SLURM = $(eval NO_SLURM := $(if $(shell timeout 1 scontrol ping 2>/dev/null | grep ' is UP'),,SLURM_CONF=/dev/null))$(NO_SLURM)
SNAKEMAKE = $(NO_SLURM) $(VENV)/bin/snakemake

install: $(STAMP) atlas-packages

# torch==2.13.0 first: a CPU wheel where pip's configuration offers one (this project's
# machines); PyPI's Linux wheel is the CUDA build, which TORCH_PIP_ARGS="--index-url
# https://download.pytorch.org/whl/cpu" avoids. An unpinned torch would pull CUDA too.
TORCH_PIP_ARGS ?=
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Regenerated when its generator changes (a demo left from an older generator would
# train on data the defaults were not chosen for).
$(DEMO_BIDS)/dataset_description.json: $(wildcard workflow/bidstrain/demo/*.py) | $(STAMP)
	rm -rf $(DEMO_BIDS)
	$(VENV)/bin/bidstrain-demo $(DEMO_BIDS)

demo: $(STAMP) $(DEMO_BIDS)/dataset_description.json
	$(SNAKEMAKE) --cores $(CORES) all
	$(SNAKEMAKE) --report results/report.html

# The naturalistic demo in a study folder of its own ($(NATURALISTIC)/study, docs/
# study-folder.md): the film dataset, a study configuration started from
# config/naturalistic.yaml (made again when that file changes), then the workflow and its
# report ($(NATURALISTIC)/study/results/report.html).
$(NATURALISTIC)/bids/dataset_description.json: $(wildcard workflow/bidstrain/demo/*.py) | $(STAMP)
	rm -rf $(NATURALISTIC)/bids
	$(VENV)/bin/bidstrain-naturalistic-demo $(NATURALISTIC)/bids

$(NATURALISTIC)/study/config/config.yaml: config/naturalistic.yaml | $(STAMP) $(NATURALISTIC)/bids/dataset_description.json
	rm -f $@
	$(VENV)/bin/bidstrain init $(NATURALISTIC)/study --bids-dir $(NATURALISTIC)/bids \
		--experiment naturalistic --configfile config/naturalistic.yaml

demo-naturalistic: $(STAMP) $(NATURALISTIC)/bids/dataset_description.json $(NATURALISTIC)/study/config/config.yaml
	$(VENV)/bin/bidstrain -C $(NATURALISTIC)/study report --cores $(CORES)

# Every problem of the dataset's headers and sidecars at once (results/validate/).
validate: $(STAMP) $(DEMO_BIDS)/dataset_description.json
	$(SNAKEMAKE) --cores $(CORES) validate

# The run, then the report of every stage: results/report.html, never older than them.
report: demo

# Each running job of the newest run and the last line of its log.
status: $(STAMP)
	$(PY) -m bidstrain.cli status

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

lint: $(STAMP) $(DEMO_BIDS)/dataset_description.json $(NATURALISTIC)/study/config/config.yaml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check workflow/Snakefile workflow/rules
	# SLURM_CONF=/dev/null: the SLURM plugin's help text asks scontrol, which waits 10 s for
	# a controller when none answers; the lint does not use SLURM. The naturalistic study
	# adds the stimulus and encoding rules, which the demo's configuration leaves out.
	SLURM_CONF=/dev/null $(VENV)/bin/snakemake --lint --configfile config/config.yaml
	SLURM_CONF=/dev/null $(VENV)/bin/snakemake --lint --snakefile $(CURDIR)/workflow/Snakefile \
		--directory $(NATURALISTIC)/study

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/snakefmt workflow/Snakefile workflow/rules

clean:
	rm -rf results/* .snakemake
