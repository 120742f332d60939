# Parse-time set-up shared by every stage: the config validated and typed, the BIDS index,
# and the plan (bidstrain.plan) that decides what to build. No rule is defined here, and
# the rule files decide nothing: they declare rules over PLAN's attributes.
import gc
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, workflow.basedir)

# Snakemake allocates hundreds of objects per job while it builds and prints the DAG. With
# Python's default threshold (a collection every 700 allocations) the cyclic garbage
# collector took a fifth of a dry run of 1,000 subjects, rescanning the BIDS index and
# the plan each time: collect less often, and (below) take what parse time built, alive
# for the whole run, out of the collector's sight. See BENCHMARKS.md.
gc.set_threshold(50_000)

from bidstrain import paths
from bidstrain.dataset.bids import BidsIndex
from bidstrain.config import (
    Config,
    TrainResources,
    to_plain,
    retype_overrides,
    validate_config,
)
from bidstrain.dataset.derivatives import nested_derivatives_warning
from bidstrain.errors import BidstrainError
from bidstrain.plan import Plan, settings_changes, write_if_changed, write_plan

# The SLURM profile may set the training job's GPUs per node, nodes and GPU type
# (set-resources: train: gpus_per_node, nodes, gpu_type, mem_mb): the plan takes them from
# there, so the checks, the launcher and the trainer see one world size, and the loader
# buffers are checked against the memory the job gets.
try:
    _TRAIN_RESOURCES = TrainResources.from_profile(
        workflow.resource_settings.overwrite_resources
    )
    # `--config train='{lr: 0.002}'`: Snakemake gives the nested scalars as strings
    retype_overrides(config, workflow.config_settings.config)
    validate_config(config)
    CONFIG = Config.from_dict(config)
    INDEX = BidsIndex.build(
        CONFIG.bids_dir,
        participant_label=CONFIG.participant_label,
        exclude_participant_label=CONFIG.exclude_participant_label,
    )
    PLAN = Plan.build(
        CONFIG,
        INDEX,
        gpus=_TRAIN_RESOURCES.gpus_per_node,
        nodes=_TRAIN_RESOURCES.nodes,
        gpu_model=_TRAIN_RESOURCES.gpu_type,
        mem_mb=_TRAIN_RESOURCES.mem_mb,
    )
    # Lists that grow with the number of subjects, and the settings of the train and checks
    # jobs, reach jobs through files, never their command line; a file is rewritten only
    # when its content changes. Which settings changed since the previous parse is said
    # here (a rerun reason shows only their hash).
    for _CHANGE in settings_changes(PLAN.job_settings()):
        logger.info(f"bidstrain: {_CHANGE}")
    # jobs read the snapshot of each file (bidstrain.plan.write_plan), by its path here
    SNAPSHOTS = write_plan(PLAN.files())
except BidstrainError as error:
    raise WorkflowError(f"bidstrain: {error}") from None
if _NESTED := nested_derivatives_warning(INDEX.root):
    logger.warning(f"bidstrain: {_NESTED}")
gc.freeze()

ENV = str(Path(workflow.basedir) / "envs" / "bidstrain.yaml")
# Rules run `python -m bidstrain.<module>`: the conda environment's python with
# --sdm conda, else the interpreter running Snakemake (its folder first on PATH, so an
# unactivated venv works). PYTHONPATH makes the package importable even where it was not
# pip-installed.
_USES_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_PATH = "" if _USES_CONDA else f'export PATH="{Path(sys.executable).parent}:$PATH"; '
_PACKAGE_DIR = Path(workflow.basedir)
# (Snakemake formats the prefix like a shell command: shell braces are doubled.)
shell.prefix(
    f"set -euo pipefail; {_PATH}"
    f'export PYTHONPATH="{_PACKAGE_DIR}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
)


wildcard_constraints:
    subject=r"[a-zA-Z0-9]+",
    prefix=r"sub-[a-zA-Z0-9]+/(ses-[a-zA-Z0-9]+/)?(anat|func|dwi)/sub-[a-zA-Z0-9_-]+",
