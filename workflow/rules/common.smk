# Parse-time set-up shared by every stage: config validation, the BIDS index, and the
# input functions and path helpers of every rule file. No rule is defined here.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from bidstrain.bids import BidsIndex
from bidstrain.config import validate_config
from bidstrain.errors import BidstrainError
from bidstrain.normalize.heldout import fitting_runs
from bidstrain.normalize.masking import is_pattern, resolve_pattern

try:
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
    INDEX = BidsIndex.build(
        config["bids_dir"],
        participant_label=config["participant_label"],
        exclude_participant_label=config["exclude_participant_label"],
    )
except BidstrainError as error:
    raise WorkflowError(f"bidstrain: {error}") from None

RESULTS = "results"
ENV = str(Path(workflow.basedir) / "envs" / "bidstrain.yaml")
# Rules run `python -m bidstrain.<module>`: the conda environment's python with
# --sdm conda, else the interpreter running Snakemake (its folder first on PATH, so an
# unactivated venv works). PYTHONPATH makes the package importable even where it was not
# pip-installed.
_USES_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_PATH = "" if _USES_CONDA else f'export PATH="{Path(sys.executable).parent}:$PATH"; '
_PACKAGE_DIR = Path(workflow.basedir) / "workflow"
# (Snakemake formats the prefix like a shell command: shell braces are doubled.)
shell.prefix(
    f"set -euo pipefail; {_PATH}"
    f'export PYTHONPATH="{_PACKAGE_DIR}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
)


PREFIX = r"sub-[a-zA-Z0-9]+/(ses-[a-zA-Z0-9]+/)?(anat|func|dwi)/sub-[a-zA-Z0-9_-]+"


wildcard_constraints:
    subject=r"[a-zA-Z0-9]+",
    prefix=PREFIX,


def images(modality):
    """Images of one modality that the config selects (none when the modality is off)."""
    if modality not in config["modalities"]:
        return []
    tasks = config["tasks"] if modality == "bold" else ()
    return INDEX.select(modality, task=tasks)


SUBJECTS = sorted({image.subject for m in config["modalities"] for image in images(m)})
_EMPTY = sorted(set(INDEX.subjects) - set(SUBJECTS))
if _EMPTY:
    raise WorkflowError(
        f"bidstrain: subject(s) {', '.join(f'sub-{s}' for s in _EMPTY)} in {INDEX.root} have "
        f"no {' or '.join(config['modalities'])} image (add images or list them in "
        "exclude_participant_label)"
    )


def ingest_json(subject):
    """Ingestion record of a subject: every per-image rule takes it as input."""
    return f"{RESULTS}/ingest/sub-{subject}.json"


# ---- Store paths shared by normalize, average, checks, train and report ----------------


def normalized_store(image):
    """Zarr store of one normalized image: results/normalized/<BIDS prefix>_desc-zscore_<suffix>.zarr."""
    return f"{RESULTS}/normalized/{image.prefix}_desc-zscore_{image.suffix}.zarr"


def heldout_lookahead():
    """Regex lookahead true where a path holds every ``normalize.heldout`` entity value:
    it tells the held-out BOLD runs' rule from the training runs' rule by their paths.
    """
    return "".join(
        rf"(?=(?:.*[_/])?{key}-(?:{'|'.join(map(re.escape, values))})(?:[_/]|$))"
        for key, values in config["normalize"]["heldout"].items()
    )


def is_heldout(image):
    """Whether config normalize.heldout selects this BOLD run (validation data)."""
    heldout = config["normalize"]["heldout"]
    return (
        image.suffix == "bold"
        and bool(heldout)
        and all(image.entities.get(key) in values for key, values in heldout.items())
    )


def average_key(image):
    """(task, run) a BOLD run is averaged under across subjects."""
    return image.entities.get("task", ""), image.entities.get("run", "")


def average_store(task, run):
    """Cross-subject average store of a task (and run)."""
    run_part = f"_run-{run}" if run else ""
    return f"{RESULTS}/average/task-{task}{run_part}_desc-average_bold.zarr"


def bold_stores(heldout):
    """BOLD stores training (heldout=False) or validation (heldout=True) reads.

    cross_subject: one averaged store per (task, run); per_subject: the subject stores.
    """
    runs = [image for image in images("bold") if is_heldout(image) == heldout]
    if config["average"]["mode"] == "cross_subject":
        return sorted({average_store(*average_key(image)) for image in runs})
    return [normalized_store(image) for image in runs]


def training_stores():
    """Stores the trainer reads, by modality: {"T1w": [...], "bold": [...], "dwi": [...]}."""
    stores = {
        m: [normalized_store(image) for image in images(m)] for m in ("T1w", "dwi")
    }
    stores["bold"] = bold_stores(heldout=False)
    return {
        m: paths for m, paths in stores.items() if m in config["modalities"] and paths
    }


def validation_stores():
    """Held-out BOLD stores (normalized with the training runs' statistics)."""
    return {"bold": bold_stores(heldout=True)} if "bold" in config["modalities"] else {}


def flatten_stores(stores):
    """All paths of a {modality: [store, ...]} mapping, in order."""
    return [path for paths in stores.values() for path in paths]


# ---- Normalization inputs and params (normalize.smk) ------------------------------------

MASK_CONFIG = {"bold": "mask", "T1w": "t1w_mask", "dwi": "dwi_mask"}


def _resolved_masks():
    """Mask option of every image: the keyword, or its mask file from the pattern."""
    masks = {}
    for suffix, key in MASK_CONFIG.items():
        option = config["normalize"][key]
        for image in images(suffix):
            masks[(suffix, image.prefix)] = (
                resolve_pattern(
                    option, image.entities, config["bids_dir"], f"normalize.{key}"
                )
                if is_pattern(option)
                else option
            )
    return masks


def _fitting_stores():
    """Stores each held-out BOLD run takes its statistics from, by prefix."""
    runs_of_subject = {}
    for run in images("bold"):
        runs_of_subject.setdefault(run.subject, []).append(run)
    return {
        image.prefix: [
            normalized_store(run)
            for run in fitting_runs(
                image,
                runs_of_subject[image.subject],
                is_heldout,
                config["normalize"]["heldout"],
            )
        ]
        for image in images("bold")
        if is_heldout(image)
    }


try:
    NORMALIZE_MASKS = _resolved_masks()
    FITTING_STORES = _fitting_stores()
except BidstrainError as error:
    raise WorkflowError(f"bidstrain: {error}") from None


def mask_option(suffix):
    """Params function: ``epi``/``head``/``none`` or the image's mask file."""
    return lambda wildcards: NORMALIZE_MASKS[(suffix, wildcards.prefix)]


def normalize_inputs(suffix):
    """Input function of a normalize rule, for ``unpack``: the raw image, its subject's
    ingestion record, the mask file (when the config gives a path pattern) and, for a
    held-out run, the stores whose statistics it is normalized with. One function, not
    four: Snakemake inspects every input function of every job, which adds up over
    thousands of images."""

    def inputs(wildcards):
        image = INDEX.by_prefix(wildcards.prefix, suffix)
        mask = NORMALIZE_MASKS[(suffix, wildcards.prefix)]
        return {
            "image": str(image.path),
            "ingest": ingest_json(image.subject),
            "mask": [mask] if is_pattern(mask) else [],
            "stats": FITTING_STORES.get(wildcards.prefix, []),
        }

    return inputs


# ---- Training launcher (train.smk) -----------------------------------------------------


def train_launcher(wildcards, resources):
    """`python -m bidstrain.train`, or torchrun with one process per GPU when the job has
    more than one (``resources.gpu``: the SLURM profile may override train.gpus)."""
    if resources.gpu > 1:
        return (
            "python -m torch.distributed.run --standalone "
            f"--nproc_per_node={resources.gpu} -m bidstrain.train"
        )
    return "python -m bidstrain.train"
