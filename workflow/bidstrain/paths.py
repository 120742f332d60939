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
#: The plan's lists that jobs read from a file instead of their command line: argument
#: files (argparse ``@file``) of jobs shared by every experiment; an experiment's own
#: lists are under :func:`plan_dir`.
PLAN_INGEST_ARGS = f"{RESULTS}/plan/ingest.args"
#: The settings every normalize job reads from a file (its rule's param is the file's
#: hash); an experiment's train and checks settings are under :func:`plan_dir`.
PLAN_NORMALIZE_SETTINGS = f"{RESULTS}/plan/normalize.json"
#: The images ``snakemake validate`` checks (argument file written by the plan), and its
#: reports of every problem found.
PLAN_VALIDATE_ARGS = f"{RESULTS}/plan/validate.args"
VALIDATE_TABLE = f"{RESULTS}/validate/problems.tsv"
VALIDATE_TEXT = f"{RESULTS}/validate/problems.txt"
REPORT = f"{RESULTS}/report"
#: Every version of the plan's files that a job was planned with (:func:`plan_snapshot`).
PLAN_SNAPSHOTS = f"{RESULTS}/plan/snapshots"
NORMALIZED_DESC = "zscore"
AVERAGE_DESC = "average"


def _join(*parts: str) -> str:
    return os.path.join(*parts)


# ---- experiments -------------------------------------------------------------------------
# What depends on ``train.experiment`` (the checks of the training plan, training, the
# embeddings and their figures) lives under the experiment's name, so that one experiment
# never rewrites, or makes rerun, another's outputs.


def plan_snapshot(path: str, digest: str) -> str:
    """``results/plan/snapshots/<digest>-<name>``: the copy of one version of the plan file
    ``path`` (``digest``: the hash of its content) that the jobs planned with it read,
    never rewritten (:func:`bidstrain.plan.write_plan`)."""
    return _join(PLAN_SNAPSHOTS, f"{digest}-{os.path.basename(path)}")


def plan_dir(experiment: str) -> str:
    """``results/plan/<experiment>``: the plan's lists of one experiment."""
    return _join(RESULTS, "plan", experiment)


def plan_stores(experiment: str) -> str:
    """The trainer's stores (JSON written by the plan)."""
    return _join(plan_dir(experiment), "stores.json")


def plan_checks_arguments(experiment: str) -> str:
    """Argument file of the checks job (written by the plan)."""
    return _join(plan_dir(experiment), "checks.args")


def plan_train_settings(experiment: str) -> str:
    """The trainer's ``train`` settings (JSON written by the plan)."""
    return _join(plan_dir(experiment), "train.json")


def plan_encoding_settings(experiment: str) -> str:
    """The encoding job's settings: the ``encoding`` section and ``train.seed`` (JSON
    written by the plan)."""
    return _join(plan_dir(experiment), "encoding.json")


def plan_encoding_inputs(experiment: str) -> str:
    """The encoding job's stores: each average's BOLD and aligned stimulus stores (JSON
    written by the plan)."""
    return _join(plan_dir(experiment), "encoding-inputs.json")


def encoding_dir(experiment: str) -> str:
    """``results/encoding/<experiment>``: the encoding model, its metrics and figures."""
    return _join(RESULTS, "encoding", experiment)


def encoding_output(experiment: str, name: str) -> str:
    """A file of the encoding job (``model.pt``, ``model.json``, ``metrics.json``,
    ``metrics.tsv``, ``heldout.npz``) or of its figures."""
    return _join(encoding_dir(experiment), name)


def encoding_prediction(experiment: str, average: str) -> str:
    """The predicted BOLD of an average's run:
    ``results/encoding/<experiment>/predicted/<average>_desc-predicted_bold.zarr``."""
    return _join(encoding_dir(experiment), "predicted", f"{average}_desc-predicted_bold.zarr")


def plan_checks_settings(experiment: str) -> str:
    """What the checks job reads of the configuration (JSON written by the plan)."""
    return _join(plan_dir(experiment), "checks.json")


def checks_dir(experiment: str) -> str:
    """``results/checks/<experiment>``: the checks of one experiment's training plan."""
    return _join(RESULTS, "checks", experiment)


def checks_summary(experiment: str) -> str:
    """The checks' summary, ``results/checks/<experiment>/summary.json``."""
    return _join(checks_dir(experiment), "summary.json")


def checks_table(experiment: str) -> str:
    """The checks' table, ``results/checks/<experiment>/summary.tsv``."""
    return _join(checks_dir(experiment), "summary.tsv")


def checks_copy_dir(experiment: str) -> str:
    """Where the checks copy their summary, ``logs/checks/<experiment>`` (kept when a
    strict failure removes the outputs)."""
    return _join(LOGS, "checks", experiment)


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


def normalize_spec(subject: str) -> str:
    """The images a subject's normalize job normalizes (JSON the plan writes)."""
    return f"{RESULTS}/plan/normalize/sub-{subject}.json"


def _parcel_output(image: BidsFile, atlas: str, suffix: str, extension: str, **extra: str) -> str:
    entities = {key: value for key, value in image.entities.items() if key != "desc"}
    name = bids_path(
        suffix=suffix, extension=extension, datatype=image.datatype, **entities, seg=atlas, **extra
    )
    return _join(RESULTS, "normalized", name)


def parcel_store(image: BidsFile, atlas: str) -> str:
    """The z-scored parcel time series of a BOLD run:
    ``results/normalized/<prefix>_seg-<atlas>_desc-zscore_timeseries.zarr``."""
    return _parcel_output(image, atlas, "timeseries", ".zarr", desc=NORMALIZED_DESC)


def parcel_timeseries(image: BidsFile, atlas: str) -> str:
    """The parcel means of a BOLD run, XCP-D style:
    ``results/normalized/<prefix>_seg-<atlas>_stat-mean_timeseries.tsv``."""
    return _parcel_output(image, atlas, "timeseries", ".tsv", stat="mean")


def parcel_coverage(image: BidsFile, atlas: str) -> str:
    """Each parcel's fraction inside a BOLD run's mask, XCP-D style:
    ``results/normalized/<prefix>_seg-<atlas>_stat-coverage_bold.tsv``."""
    return _parcel_output(image, atlas, "bold", ".tsv", stat="coverage")


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


def average_parcel_store_at(name: str, atlas: str) -> str:
    """``results/average/<name>_seg-<atlas>_desc-average_timeseries.zarr``: the parcel
    average of a group (``name`` may be a wildcard)."""
    return _join(RESULTS, "average", f"{name}_seg-{atlas}_desc-{AVERAGE_DESC}_timeseries.zarr")


def average_members(name: str) -> str:
    """Argument file of an average group's job: the subject stores it reads, and with a
    parcellation their parcel stores (written by the plan)."""
    return _join(RESULTS, "plan", "average", f"{name}.args")


def average_subject_stores(name: str) -> str:
    """Argument file listing an average group's subject stores alone, for its figure
    (written by the plan)."""
    return _join(RESULTS, "plan", "average", f"{name}.stores")


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

EMBEDDING_DESC = "embedding"


def plan_embed(experiment: str) -> str:
    """The embed job's images, stores and outputs (JSON written by the plan)."""
    return _join(plan_dir(experiment), "embed.json")


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


#: Aligned stimulus stores (bidstrain.stimuli.alignment): one per BOLD run (subject run or
#: average) and feature kind, on the frames of its BOLD store.
STIMULI_ALIGNED = f"{RESULTS}/stimuli_aligned"
#: The alignment job's spec (JSON written by the plan).
PLAN_ALIGN_SPEC = f"{RESULTS}/plan/stimuli/align.json"


def aligned_run_stimulus(image: BidsFile, kind: str) -> str:
    """``results/stimuli_aligned/<prefix>_desc-<kind>_stimulus.zarr``: the ``kind``
    features (video, audio, text) of a subject's BOLD run on its frames."""
    return _join(STIMULI_ALIGNED, f"{store_prefix(image)}_desc-{kind}_stimulus.zarr")


def aligned_average_stimulus(name: str, kind: str) -> str:
    """``results/stimuli_aligned/average/<name>_desc-<kind>_stimulus.zarr``: the ``kind``
    features of a cross-subject average's stimulus on its frames."""
    return _join(STIMULI_ALIGNED, "average", f"{name}_desc-{kind}_stimulus.zarr")


# ---- report ------------------------------------------------------------------------------


def coverage_figure() -> str:
    """The ingestion coverage figure."""
    return _join(REPORT, "ingest", "coverage.png")


def normalize_figures(group: str) -> str:
    """Folder of a figure group's normalization figures (wildcards allowed),
    ``results/report/normalize/group-<group>``: one PNG per store of its subjects, at
    the store's path below ``results/normalized`` with ``.png`` for ``.zarr``."""
    return _join(REPORT, "normalize", f"group-{group}")


def normalize_figures_tables(group: str) -> str:
    """Argument file listing the normalize tables a figure group's job reads (written by
    the plan)."""
    return _join(RESULTS, "plan", "report", f"normalize-{group}.args")


def average_figure(name: str) -> str:
    """Figure of one average group (``name`` may be a wildcard)."""
    return _join(REPORT, "average", f"{name}.png")


def stimulus_figure(name: str) -> str:
    """Stimulus features beside the averaged BOLD of one average (``name`` may be a
    wildcard)."""
    return _join(REPORT, "stimuli", f"{name}.png")


def checks_figure(experiment: str, name: str) -> str:
    """One figure of an experiment's checks (``scale_table``, ``summary``)."""
    return _join(REPORT, "checks", experiment, f"{name}.png")


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
