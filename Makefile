# The two commands of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
DEMO_BIDS := demo_data/bids

.PHONY: install demo test lint format bench clean

install: $(STAMP)

# torch==2.13.0 first: a CPU wheel here; an unpinned torch would pull the CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DEMO_BIDS)/dataset_description.json: | $(STAMP)
	$(VENV)/bin/bidstrain-demo $(DEMO_BIDS)

demo: $(STAMP) $(DEMO_BIDS)/dataset_description.json
	$(VENV)/bin/snakemake --profile profiles/default --cores $(CORES) all
	$(VENV)/bin/snakemake --profile profiles/default --report results/report.html

test: $(STAMP)
	$(PY) -m pytest -x -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint --configfile config/config.yaml

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/snakefmt Snakefile workflow/rules

clean:
	rm -rf results/* .snakemake
