"""Every output path of the workflow, built in one place on
:func:`bidstrain.dataset.bids.bids_path`.

Paths are relative to the working directory (Snakemake's ``--directory``). Functions that
take a ``prefix`` or a name accept Snakemake wildcards too (``"{prefix}"``), so a rule's
output pattern and the plan's literal paths come from the same function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from bidstrain.dataset.bids import BidsFile, bids_name, bids_path

RESULTS = "results"
LOGS = "logs"
#: The ingest manifest: one row per image of every subject, with its store and when the
#: store was written.
MANIFEST = f"{RESULTS}/ingest/manifest.tsv"
#: The results folder's BIDS-Derivatives description.
DATASET_DESCRIPTION = f"{RESULTS}/dataset_description.json"
#: The plan's lists that jobs read from a file instead of their command line: the
#: trainer's stores (JSON), and argument files (argparse ``@file``) of other jobs.
PLAN_STORES = f"{RESULTS}/plan/stores.json"
PLAN_CHECKS_ARGS = f"{RESULTS}/plan/checks.args"
PLAN_INGEST_ARGS = f"{RESULTS}/plan/ingest.args"
CHECKS_SUMMARY = f"{RESULTS}/checks/summary.json"
CHECKS_TABLE = f"{RESULTS}/checks/summary.tsv"
#: Where the checks copy their summary (kept when a strict failure removes the outputs).
CHECKS_COPY_DIR = f"{LOGS}/checks"
REPORT = f"{RESULTS}/report"
NORMALIZED_DESC = "zscore"
AVERAGE_DESC = "average"


def _join(*parts: str) -> str:
    return os.path.join(*parts)


# ---- ingest ------------------------------------------------------------------------------


def ingest_record(subject: str) -> str:
    """Ingestion record of a subject: ``results/ingest/sub-<label>.json``."""
    return _join(RESULTS, "ingest", f"sub-{subject}.json")


# ---- normalize ---------------------------------------------------------------------------


def store_prefix(image: BidsFile) -> str:
    """The ``{prefix}`` of an image's store: its BIDS path without suffix, extension and
    ``desc`` (a derivative's ``desc-preproc`` gives way to the store's own ``desc``)."""
    if "desc" not in image.entities:
        return image.prefix
    entities = {key: value for key, value in image.entities.items() if key != "desc"}
    return bids_path(suffix="", datatype=image.datatype, **entities)[:-1]


def normalized_store_at(prefix: str, suffix: str) -> str:
    """``results/normalized/<prefix>_desc-zscore_<suffix>.zarr`` (wildcards allowed)."""
    return _join(RESULTS, "normalized", f"{prefix}_desc-{NORMALIZED_DESC}_{suffix}.zarr")


def normalized_store(image: BidsFile) -> str:
    """The z-scored Zarr store of one image."""
    return normalized_store_at(store_prefix(image), image.suffix)


def normalized_table(subject: str) -> str:
    """Output of a subject's normalize job (wildcards allowed): the table of the stores
    it wrote, ``results/normalized/sub-<label>/sub-<label>_scans.tsv``."""
    return _join(RESULTS, "normalized", f"sub-{subject}", f"sub-{subject}_scans.tsv")


# ---- average -----------------------------------------------------------------------------


def average_name(entities: Mapping[str, str]) -> str:
    """Name of a cross-subject average group: its entities, ``task-<task>[_acq-<acq>]...
    [_run-<run>]`` in BIDS order."""
    return bids_name(suffix="", **entities).rstrip("_")


def average_store_at(name: str) -> str:
    """``results/average/<name>_desc-average_bold.zarr`` (``name`` may be a wildcard)."""
    return _join(RESULTS, "average", f"{name}_desc-{AVERAGE_DESC}_bold.zarr")


def average_members(name: str) -> str:
    """Argument file listing the subject stores an average group reads (written by the
    plan)."""
    return _join(RESULTS, "plan", "average", f"{name}.args")


# ---- train -------------------------------------------------------------------------------


def train_dir(experiment: str) -> str:
    """``results/train/<experiment>``: model, metrics and checkpoints of one experiment."""
    return _join(RESULTS, "train", experiment)


def trained_model(experiment: str) -> str:
    """The trained weights: ``results/train/<experiment>/model.pt``."""
    return _join(train_dir(experiment), "model.pt")


def trained_model_description(experiment: str) -> str:
    """What the model expects of its input: ``results/train/<experiment>/model.json``."""
    return _join(train_dir(experiment), "model.json")


def training_metrics(experiment: str) -> str:
    """Per-step metrics: ``results/train/<experiment>/metrics.jsonl``."""
    return _join(train_dir(experiment), "metrics.jsonl")


def checkpoints(experiment: str) -> str:
    """Checkpoint folder of one experiment."""
    return _join(train_dir(experiment), "checkpoints")


# ---- embed -------------------------------------------------------------------------------

#: The embed job's images, stores and outputs (JSON written by the plan).
PLAN_EMBED = f"{RESULTS}/plan/embed.json"
EMBEDDING_DESC = "embedding"


def embed_dir(experiment: str) -> str:
    """``results/embed/<experiment>``: the embeddings of one experiment's model."""
    return _join(RESULTS, "embed", experiment)


def embedding_store(experiment: str, image: BidsFile) -> str:
    """``results/embed/<experiment>/<prefix>_desc-embedding_<suffix>.zarr`` of one image."""
    return _join(
        embed_dir(experiment), f"{store_prefix(image)}_desc-{EMBEDDING_DESC}_{image.suffix}.zarr"
    )


def embed_table(experiment: str) -> str:
    """Output of the embed job: the table of the embedding stores it wrote."""
    return _join(embed_dir(experiment), "embeddings.tsv")


def embed_figure(experiment: str) -> str:
    """The embedding figure of one experiment."""
    return _join(REPORT, "embed", f"{experiment}.png")


# ---- stimuli -----------------------------------------------------------------------------

#: Feature stores of the stimulus files (bidstrain.stimuli), mirroring the dataset's paths.
STIMULI = f"{RESULTS}/stimuli"


def stimulus_features(stimulus: str) -> str:
    """``results/stimuli/<path in the dataset>.zarr``: the feature store of one stimulus
    file (``stimuli/film.mp4``, or a run's ``events.tsv`` holding its words)."""
    return _join(STIMULI, f"{stimulus}.zarr")


# ---- report ------------------------------------------------------------------------------


def coverage_figure() -> str:
    """The ingestion coverage figure."""
    return _join(REPORT, "ingest", "coverage.png")


def normalize_figures(group: str) -> str:
    """Folder of a figure group's normalization figures (wildcards allowed),
    ``results/report/normalize/group-<group>``: one PNG per store of its subjects,
    :func:`normalize_figure`."""
    return _join(REPORT, "normalize", f"group-{group}")


def normalize_figure(group: str, store: str) -> str:
    """Figure of one normalized store in its subject's figure group: the store's path
    below ``results/normalized``, with ``.png`` for ``.zarr``, in
    :func:`normalize_figures`."""
    relative = os.path.relpath(store, _join(RESULTS, "normalized"))
    return _join(normalize_figures(group), relative.removesuffix(".zarr") + ".png")


def normalize_figures_tables(group: str) -> str:
    """Argument file listing the normalize tables a figure group's job reads (written by
    the plan)."""
    return _join(RESULTS, "plan", "report", f"normalize-{group}.args")


def average_figure(name: str) -> str:
    """Figure of one average group (``name`` may be a wildcard)."""
    return _join(REPORT, "average", f"{name}.png")


def checks_figure(name: str) -> str:
    """One figure of the checks (``scale_table``, ``summary``)."""
    return _join(REPORT, "checks", f"{name}.png")


def training_figures_dir(experiment: str) -> str:
    """Folder of one experiment's training figures (wildcards allowed)."""
    return _join(REPORT, "train", experiment)


def training_figure(experiment: str, name: str) -> str:
    """One training figure of an experiment (wildcards allowed)."""
    return _join(training_figures_dir(experiment), f"{name}.png")


# ---- logs --------------------------------------------------------------------------------


def log(stage: str, name: str) -> str:
    """``logs/<stage>/<name>.log`` (``name`` may hold wildcards and folders)."""
    return _join(LOGS, stage, f"{name}.log")
