# Parse-time set-up shared by every stage: config validation, the BIDS index, and the
# helpers that turn index records into file paths. No rule is defined here.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from bidstrain.bids import BidsIndex, bids_path
from bidstrain.config import validate_config
from bidstrain.errors import BidstrainError

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
# Rules run `python -m bidstrain.<module>`: the venv's interpreter locally, the conda
# environment's `python` with --sdm conda. PYTHONPATH makes the package importable even
# where it was not pip-installed.
_PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else sys.executable
)
BIDSTRAIN = f"PYTHONPATH={Path(workflow.basedir) / 'workflow'}${{PYTHONPATH:+:$PYTHONPATH}} {_PYTHON} -m bidstrain"


wildcard_constraints:
    subject=r"[a-zA-Z0-9]+",
    prefix=r"sub-[a-zA-Z0-9]+/(ses-[a-zA-Z0-9]+/)?(anat|func|dwi)/sub-[a-zA-Z0-9_-]+",


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
        f"bidstrain: subject(s) {', '.join('sub-' + s for s in _EMPTY)} in {INDEX.root} have no "
        f"{'/'.join(config['modalities'])} image (add images or list them in "
        "exclude_participant_label)"
    )


def ingest_json(subject):
    """Ingestion record of a subject: every per-image rule takes it as input."""
    return f"{RESULTS}/ingest/sub-{subject}.json"


def image_of(suffix):
    """Input function: the raw image behind a per-image rule's ``{prefix}`` wildcard."""
    return lambda wildcards: str(INDEX.by_prefix(wildcards.prefix, suffix).path)


def ingest_json_of(suffix):
    """Input function: the ingestion record of the subject behind ``{prefix}``."""
    return lambda wildcards: ingest_json(
        INDEX.by_prefix(wildcards.prefix, suffix).subject
    )


# ---- Store paths shared by normalize, average, checks, train and report ----------------


def normalized_store(image):
    """Zarr store of one normalized image: results/normalized/<BIDS prefix>_desc-zscore_<suffix>.zarr."""
    return f"{RESULTS}/normalized/{image.prefix}_desc-zscore_{image.suffix}.zarr"


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
