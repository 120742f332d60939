"""What the workflow builds: a pure function of the validated config and the BIDS index.

:meth:`Plan.build` decides, once, at parse time: the images of every modality, the
held-out BOLD runs and the stores each is normalized with, the mask of every image, the
normalize job of every subject, the cross-subject average groups, the stores
training and validation read, the report's figures, the world size of the training
job, and (with ``stimuli.enabled``) the stimulus files whose features to compute. The
rule files only declare rules over its attributes; everything here is unit-tested
without Snakemake.

Granularity: one normalize job per subject (it validates every image header of the
subject and writes its ingest record, then normalizes every image of the subject,
sessions included, the held-out runs after the runs whose statistics they take); the
normalization figures are drawn by one job per group of subjects (``report.normalize_groups``
groups at most, a subject's group fixed by its label: :func:`figure_group_of`): the DAG
grows by one job per subject, not per image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidstrain import __version__, paths
from bidstrain.config import Config, config_hash, setting_changes, to_plain
from bidstrain.dataset import derivatives
from bidstrain.dataset.atlas import AtlasFiles, atlas_checksum, check_space, find_atlas
from bidstrain.dataset.bids import BidsFile, BidsIndex, select_echo, select_part
from bidstrain.dataset.masks import DEFAULT_MASKS, MASK_KEYS, is_pattern, resolve_pattern
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import write_text_atomic
from bidstrain.modalities import MODALITIES, STIMULUS_KINDS
from bidstrain.report import CHECKS_FIGURES, TRAINING_FIGURES
from bidstrain.train.expectation import expectation
from bidstrain.train.ring_size import largest_sample, loader_bytes, ring_slots

if TYPE_CHECKING:  # imported when stimuli.enabled: PyAV and nibabel cost 0.3 s at parse
    from bidstrain.stimuli.alignment import AlignTarget
    from bidstrain.stimuli.index import StimulusIndex

log = logging.getLogger(__name__)

#: The datatype folders of the modalities: a subject without any is not an MRI participant.
MRI_DATATYPES = frozenset({"anat", "func", "dwi"})
#: BIDS entities whose value is an index (a non-negative integer, leading zeros allowed).
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "split", "chunk"})
#: BIDS version the outputs follow.
BIDS_VERSION = "1.10.0"


@dataclass(frozen=True)
class ImageJob:
    """One image of a normalize job: its store, mask and statistics."""

    image: BidsFile
    store: str
    mask: str  # a keyword (epi, head, none) or the mask file
    stats_from: tuple[str, ...]  # stores of the runs a held-out run takes statistics from
    confounds: str | None = None  # fMRIPrep's confounds table, when they are regressed
    # parcel outputs (config parcellation); a mapping, so left out of the hash
    parcels: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def heldout(self) -> bool:
        """Whether the image is normalized with other runs' statistics."""
        return bool(self.stats_from)

    def spec(self) -> dict[str, Any]:
        """What the job's command reads for this image (see ``bidstrain.normalize``)."""
        return {
            "modality": self.image.suffix,
            "image": str(self.image.path),
            "store": self.store,
            "mask": self.mask,
            "stats_from": list(self.stats_from),
            **({"confounds": self.confounds} if self.confounds else {}),
            **({"parcels": dict(self.parcels)} if self.parcels else {}),
        }


@dataclass(frozen=True)
class NormalizeJob:
    """The normalize job of one subject: its images of every modality, held-out BOLD
    runs after the runs whose statistics they take."""

    subject: str
    images: tuple[ImageJob, ...]

    @property
    def table(self) -> str:
        """The job's output: the table of the stores it wrote."""
        return paths.normalized_table(self.subject)

    @property
    def stores(self) -> list[str]:
        """The stores the job writes."""
        return [image.store for image in self.images]

    def inputs(self) -> dict[str, Any]:
        """Named inputs of the job (``unpack``-able): a changed image, mask, confounds
        table or run's label image reruns it."""
        return {
            "images": [str(image.image.path) for image in self.images],
            "masks": sorted({image.mask for image in self.images if is_pattern(image.mask)}),
            "confounds": [image.confounds for image in self.images if image.confounds],
            "label_images": [
                image.parcels["atlas_image"]
                for image in self.images
                if image.parcels and "atlas_image" in image.parcels
            ],
        }

    def spec(self) -> str:
        """The job's images as JSON (the content of :attr:`spec_file`)."""
        return json.dumps([image.spec() for image in self.images], indent=1) + "\n"

    @property
    def spec_file(self) -> str:
        """The file the plan writes :meth:`spec` into, which the job reads."""
        return paths.normalize_spec(self.subject)

    def spec_digest(self) -> str:
        """A short hash of :meth:`spec`: the job's param, so that a change of its images
        (their masks, held-out runs, selection) reruns it."""
        return _digest(self.spec())


#: Files of the encoding job, in its output folder (:func:`paths.encoding_output`).
ENCODING_OUTPUTS = ("model.pt", "model.json", "metrics.json", "metrics.tsv", "heldout.npz")
#: The encoding figures (PNG), in the same folder.
ENCODING_FIGURES = ("encoding_timecourses.png", "encoding_correlation_map.png")


@dataclass(frozen=True)
class AverageGroup:
    """One cross-subject average: the subject stores of one acquisition (task, run and
    the other entities of :func:`bidstrain.paths.average_name`), and its store."""

    name: str  # task-<task>[_acq-<acq>]...[_run-<run>]
    members: tuple[str, ...]
    atlas: str | None = None  # config parcellation's name: parcels are averaged too
    parcel_members: tuple[str, ...] = ()  # the members' parcel stores, with an atlas

    @property
    def store(self) -> str:
        """The average store."""
        return paths.average_store_at(self.name)

    @property
    def parcel_store(self) -> str | None:
        """The parcel average store (None without a parcellation)."""
        return paths.average_parcel_store_at(self.name, self.atlas) if self.atlas else None

    def arguments(self) -> list[str]:
        """The content of :attr:`members_file`: the members, and with a parcellation their
        parcel stores and the parcel average's path (``python -m bidstrain.average``)."""
        if not self.atlas:
            return list(self.members)
        return [
            *self.members,
            "--parcels",
            *self.parcel_members,
            "--parcels-out",
            self.parcel_store,
        ]

    @property
    def members_file(self) -> str:
        """The file of :meth:`arguments`, which the average job reads."""
        return paths.average_members(self.name)

    @property
    def stores_file(self) -> str:
        """The file listing :attr:`members` alone, which the average's figure reads."""
        return paths.average_subject_stores(self.name)


@dataclass(frozen=True)
class FigureGroup:
    """The subjects whose normalization figures one job draws (:func:`figure_group_of`)."""

    name: str  # the group's number, zero-padded to the width of the largest
    subjects: tuple[str, ...]

    @property
    def tables(self) -> list[str]:
        """The normalize tables of the subjects: the job's inputs."""
        return [paths.normalized_table(subject) for subject in self.subjects]

    @property
    def tables_file(self) -> str:
        """The file listing :attr:`tables`, which the job reads."""
        return paths.normalize_figures_tables(self.name)


@dataclass(frozen=True)
class Plan:
    """Everything the workflow builds (see the module docstring). Use :meth:`build`."""

    config: Config
    images: Mapping[str, tuple[BidsFile, ...]]
    subjects: tuple[str, ...]
    jobs: Mapping[str, NormalizeJob]  # by subject
    averages: tuple[AverageGroup, ...]
    figure_groups: Mapping[str, FigureGroup]  # by name
    training: Mapping[str, tuple[str, ...]]
    validation: Mapping[str, tuple[str, ...]]
    gpus: int  # per node
    nodes: int
    gpu_model: str
    atlas: AtlasFiles | None = None  # config parcellation
    stimuli: StimulusIndex | None = None  # with stimuli.enabled

    @classmethod
    def build(
        cls,
        config: Config,
        index: BidsIndex,
        *,
        gpus: int | None = None,
        nodes: int | None = None,
        gpu_model: str = "",
        mem_mb: int | None = None,
    ) -> Plan:
        """Decide what to build.

        Parameters
        ----------
        config : Config
            The validated, typed configuration.
        index : BidsIndex
            The dataset's index.
        gpus, nodes : int, optional
            GPUs per node and nodes of the training job when something other than the
            config decides them (the SLURM profile's ``set-resources`` of rule ``train``:
            ``gpus_per_node``, ``nodes``); default ``resources.train.gpus`` and
            ``resources.train.nodes``.
        gpu_model : str
            GPU type to ask SLURM for (the profile's ``gpu_type``); any when empty.
        mem_mb : int, optional
            Memory per node of the training job when the profile sets it (its
            ``mem_mb``); default ``resources.train.mem_mb``.

        Raises
        ------
        BidstrainError
            A dataset without subjects; a subject without any image of the configured
            modalities (one without any MRI folder is left out, with a warning); a held-out
            selection that leaves a subject no run to fit on; a mask pattern naming an
            entity an image lacks; loader batch buffers beyond the training job's memory
            (:func:`_check_loader_memory`).
        """
        kind = derivatives.dataset_kind(index.root)
        if config.space and not kind.is_derivative:
            raise BidstrainError(
                f"config space {config.space} is set but bids_dir is read as raw BIDS, whose "
                "runs have no space (its dataset_description.json has neither DatasetType "
                "'derivative' nor GeneratedBy): every space's run would be taken as a run of "
                "its own; point bids_dir at the pipeline's output, or leave space unset",
                path=index.root,
            )
        images = {m: tuple(_select(index, config, m, kind)) for m in MODALITIES}
        subjects = tuple(sorted({image.subject for group in images.values() for image in group}))
        _require_images(index, config, subjects)
        atlas = find_atlas(config.parcellation) if config.parcellation.enabled else None
        _check_bold_input(config, atlas, bool(images["bold"]))
        config.train.model.check_window_tokens()
        _check_train_stimuli(config)
        jobs = _normalize_jobs(
            config, index, kind, [i for m in MODALITIES for i in images[m]], atlas
        )
        by_modality = {
            m: [i for job in jobs.values() for i in job.images if i.image.suffix == m]
            for m in MODALITIES
        }
        bold = by_modality["bold"]
        averages = _average_groups(bold, atlas) if config.average.mode == "cross_subject" else ()
        volumes = {m: _volume_stores(by_modality[m], config) for m in ("T1w", "dwi")}
        training = {
            "T1w": volumes["T1w"][0],
            "dwi": volumes["dwi"][0],
            "bold": _bold_stores(bold, averages, validation=False),
        }
        validation = {
            "T1w": volumes["T1w"][1],
            "dwi": volumes["dwi"][1],
            "bold": _bold_stores(bold, averages, validation=True),
        }
        training = {m: s for m, s in training.items() if s}
        validation = {m: s for m, s in validation.items() if s}
        config.train.model.check_patch_grid(training)
        gpus = config.resources.train.gpus if gpus is None else gpus
        _check_loader_memory(
            config,
            training,
            validation,
            gpus=gpus,
            mem_mb=config.resources.train.mem_mb if mem_mb is None else mem_mb,
        )
        return cls(
            config=config,
            images=images,
            subjects=subjects,
            jobs=jobs,
            averages=averages,
            figure_groups=_figure_groups(subjects, config.report.normalize_groups),
            training=training,
            validation=validation,
            gpus=gpus,
            nodes=config.resources.train.nodes if nodes is None else nodes,
            gpu_model=gpu_model,
            atlas=atlas,
            stimuli=_stimuli(config, index, images["bold"]),
        )

    # ---- normalize ---------------------------------------------------------------------

    def job(self, subject: str) -> NormalizeJob:
        """The normalize job of a rule's ``{subject}`` wildcard."""
        try:
            return self.jobs[subject]
        except KeyError:
            raise BidstrainError(f"the plan has no image of sub-{subject}") from None

    def stores(self, modality: str) -> list[str]:
        """Every store of a modality's images, held-out runs included."""
        return [
            image.store
            for job in self.jobs.values()
            for image in job.images
            if image.image.suffix == modality
        ]

    @property
    def normalized_stores(self) -> list[str]:
        """Every subject store of every modality."""
        return [store for job in self.jobs.values() for store in job.stores]

    @property
    def atlas_files(self) -> list[str]:
        """The atlas files every normalize job reads (config ``parcellation``): its label
        image and table; with a label image per run, the table (each job names its runs'
        images among its own inputs). Inputs of the jobs, so that an atlas edited in
        place reruns them."""
        if self.atlas is None:
            return []
        shared = (
            [self.atlas.labels] if self.atlas.per_run else [self.atlas.image, self.atlas.labels]
        )
        return [str(path) for path in shared]

    @property
    def normalized_tables(self) -> list[str]:
        """The output of every normalize job."""
        return [job.table for job in self.jobs.values()]

    def subjects_to_retry(self) -> list[str]:
        """Subjects without a normalize table while the manifest exists: their last job
        failed (Snakemake removed its outputs). A param of the manifest job, so that the
        next run reruns it, and through it retries those subjects: Snakemake would not
        regenerate a missing table behind an up-to-date manifest."""
        if not Path(paths.MANIFEST).exists():
            return []
        return [subject for subject, job in self.jobs.items() if not Path(job.table).exists()]

    def manifest_arguments(self) -> list[str]:
        """The manifest job's arguments (``python -m bidstrain.ingest manifest``): every
        subject's ingest record, and the tables of the same subjects in the same order."""
        return [
            "--records",
            *(paths.ingest_record(subject) for subject in self.jobs),
            "--tables",
            *self.normalized_tables,
        ]

    def normalize_settings(self) -> dict[str, Any]:
        """What every normalize job reads of the configuration
        (:class:`~bidstrain.config.NormalizeJobConfig`): the dataset, how its ingestion
        checks the images of its spec (``ingest``) and how it normalizes them
        (``normalize``, but the masks and held-out runs, which reach each job through its
        spec, so that changing them reruns only the subjects they concern), the repetition
        time BOLD runs are resampled to (``time``) and the atlas of ``parcellation``."""
        normalize = self.config.normalize
        return {
            "bids_dir": self.config.bids_dir,
            "ingest": to_plain(self.config.ingest),
            "normalize": {
                "ddof": normalize.ddof,
                "nonfinite": normalize.nonfinite,
                "block_volumes": normalize.block_volumes,
                "storage": normalize.storage,
                "confounds": to_plain(normalize.confounds),
            },
            "time": self.config.time.settings(),
            "atlas": self.atlas.to_json() if self.atlas else None,
        }

    # ---- average, train, report --------------------------------------------------------

    @property
    def average_stores(self) -> list[str]:
        """Every average store (of voxels)."""
        return [group.store for group in self.averages]

    @property
    def average_outputs(self) -> list[str]:
        """What target ``average`` builds: every average store, and with a parcellation
        every parcel average."""
        parcels = [group.parcel_store for group in self.averages if group.parcel_store]
        return [*self.average_stores, *parcels]

    def average(self, name: str) -> AverageGroup:
        """The average group of a rule's ``{name}`` wildcard."""
        return {group.name: group for group in self.averages}[name]

    @property
    def train_resources(self) -> dict[str, Any]:
        """GPU and node request of the training job, and the ``nodes`` and
        ``gpus_per_node`` its launcher (:mod:`bidstrain.train.launch`) reads. One node:
        ``gpu`` (sbatch ``--gpus``, a total). Several: ``gres`` per node, one task per node,
        and the executor plugin's ``mpi`` marker so the job step runs the launcher's own
        ``srun`` rather than wrapping it in ``srun -n1``. Resources, not params: how the
        job is launched does not rerun it (the world size, a param, does)."""
        launch = {"nodes": self.nodes, "gpus_per_node": self.gpus}
        if self.nodes == 1:
            return {**launch, "gpu": self.gpus, "gpu_model": self.gpu_model}
        # tasks_per_gpu 0: the plugin would otherwise take `tasks` as --ntasks-per-gpu
        resources = {**launch, "tasks": self.nodes, "tasks_per_gpu": 0, "mpi": "srun"}
        if self.gpus:
            model = f"{self.gpu_model}:" if self.gpu_model else ""
            resources["gres"] = f"gpu:{model}{self.gpus}"
        return resources

    @property
    def world_size(self) -> int:
        """Ranks of the training job: nodes x GPUs per node (one process without GPUs)."""
        return self.nodes * max(1, self.gpus)

    @property
    def experiment(self) -> str:
        """``train.experiment``."""
        return self.config.train.run.experiment

    def figure_runtime(self, name: str) -> int:
        """Minutes a figure group's job may take (its SLURM time limit): it draws its
        subjects' figures one after the other (``resources.report_normalize``)."""
        subjects = len(self.figure_group(name).subjects)
        return self.config.resources.report_normalize.runtime_for(subjects)

    def average_runtime(self, name: str) -> int:
        """Minutes an average job may take: it grows with its members
        (``resources.average_bold``)."""
        return self.config.resources.average_bold.runtime_for(len(self.average(name).members))

    def figure_group(self, name: str) -> FigureGroup:
        """The figure group of a rule's ``{group}`` wildcard."""
        try:
            return self.figure_groups[name]
        except KeyError:
            raise BidstrainError(f"the plan has no normalization figure group {name}") from None

    @property
    def report_figures(self) -> list[str]:
        """Every figure of the report, in stage order (the normalization figures as the
        folder of each figure group)."""
        return [
            paths.coverage_figure(),
            *(paths.normalize_figures(name) for name in self.figure_groups),
            *(paths.average_figure(group.name) for group in self.averages),
            *(paths.stimulus_figure(name) for name in self.aligned_average_stimuli),
            *(paths.checks_figure(self.experiment, name) for name in CHECKS_FIGURES),
            *(paths.training_figure(self.experiment, name) for name in TRAINING_FIGURES),
            paths.training_figure(self.experiment, "model_input"),
            *([paths.embed_figure(self.experiment)] if self.config.embed.enabled else []),
        ]

    def trainer_stores(self, stores: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """``stores`` (:attr:`training` or :attr:`validation`) as the trainer reads them:
        with ``train.bold_input: parcels`` each BOLD run's parcel store instead of its
        voxel store (the checks read the voxel stores, whose frames and segments the
        parcel stores share)."""
        lists = {m: list(s) for m, s in stores.items()}
        if "bold" in lists:
            lists["bold"] = [self._trainer_bold(store) for store in lists["bold"]]
        return lists

    def _trainer_bold(self, store: str) -> str:
        """The store the trainer reads for the voxel BOLD store ``store``: itself, or its
        parcel store with ``train.bold_input: parcels``."""
        if self.config.train.model.bold_input != "parcels":
            return store
        return self._parcel_stores[store]

    @property
    def trained_stimulus_stores(self) -> list[str]:
        """The aligned stores of :attr:`trained_stimuli` (rule ``train``'s inputs)."""
        return sorted({p for kinds in self.trained_stimuli.values() for p in kinds.values()})

    @property
    def model_input_stimuli(self) -> list[str]:
        """The aligned stores of :attr:`trained_stimuli` of the first BOLD store training
        reads, the one whose first window the model-input figure draws (``model.json``
        names it first); empty without ``train.stimuli``."""
        first = self.trainer_stores(self.training).get("bold", [])[:1]
        aligned = self.trained_stimuli
        return [path for store in first for path in aligned.get(store, {}).values()]

    @cached_property
    def _parcel_stores(self) -> dict[str, str]:
        """The parcel store of each voxel BOLD store (runs and averages) that has one."""
        parcels = {group.store: group.parcel_store for group in self.averages}
        for job in self.jobs.values():
            parcels.update({i.store: i.parcels["store"] for i in job.images if i.parcels})
        return parcels

    @cached_property
    def trained_stimuli(self) -> dict[str, dict[str, str]]:
        """The aligned stores of ``train.stimuli`` of every BOLD store training and
        validation read, by the store the trainer reads (:meth:`trainer_stores`): what
        comes with the BOLD windows (:mod:`bidstrain.train.stimulus_windows`); empty
        without ``train.stimuli``.

        Raises
        ------
        BidstrainError
            Naming a training or validation run without aligned stimuli of a kind.
        """
        kinds = self.config.train.model.stimuli
        if not kinds:
            return {}
        targets = {target.bold: target for target in self.alignment_targets}
        read = dict.fromkeys([*self.training.get("bold", ()), *self.validation.get("bold", ())])
        stimuli = {}
        for store in read:
            target = targets.get(store)
            missing = [k for k in kinds if target is None or k not in target.outputs]
            if missing:
                label = target.label if target else " ".join(Path(store).name.split("_")[:-1])
                raise BidstrainError(
                    f"train.stimuli {list(kinds)}: the BOLD run {label} has no "
                    f"{', '.join(missing)} stimulus (no stim_file of that kind in its "
                    "events.tsv): give it one, leave the run out, or change train.stimuli",
                    path=store,
                )
            stimuli[self._trainer_bold(store)] = {k: target.outputs[k] for k in kinds}
        return stimuli

    def store_lists(self) -> dict[str, Any]:
        """The lists the trainer reads from :func:`paths.plan_stores`: the stores of
        training and validation (:meth:`trainer_stores`), the normalize tables that give
        their volume counts and segments without opening them, and the parcellation's name
        and checksum (:func:`~bidstrain.dataset.atlas.atlas_checksum`) that ``model.json``
        records."""
        atlas = self.atlas
        return {
            "training": self.trainer_stores(self.training),
            "validation": self.trainer_stores(self.validation),
            "tables": self.normalized_tables,
            "world_size": self.world_size,
            "parcellation": (
                {"name": atlas.name, "checksum": atlas_checksum(atlas)} if atlas else None
            ),
            "stimuli": self.trained_stimuli,
        }

    def dataset_description(self) -> dict[str, Any]:
        """``results/dataset_description.json``: the outputs are a BIDS-Derivatives dataset
        generated by this bidstrain version with this configuration (its hash)."""
        return {
            "Name": "bidstrain outputs",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "bidstrain",
                    "Version": __version__,
                    "Description": f"configuration hash {config_hash(self.config)}",
                }
            ],
            "SourceDatasets": [{"URL": Path(self.config.bids_dir).absolute().as_uri()}],
        }

    def job_settings(self) -> dict[str, dict[str, Any]]:
        """What the train and checks jobs read of the configuration, by the path of the
        file it reaches them through (:data:`paths.PLAN_NORMALIZE_SETTINGS`, and the
        experiment's :func:`paths.plan_train_settings`, :func:`paths.plan_checks_settings`)."""
        return {
            paths.PLAN_NORMALIZE_SETTINGS: self.normalize_settings(),
            paths.plan_train_settings(self.experiment): self.config.train.settings(),
            paths.plan_checks_settings(self.experiment): self.checks_settings(),
            **(
                {paths.plan_encoding_settings(self.experiment): self.encoding_settings()}
                if self.encoding_enabled
                else {}
            ),
        }

    def settings_digest(self, path: str) -> str:
        """A short hash of a job's settings file: the job's param, so that Snakemake
        reruns it when a setting changes and back (its rerun reason stays one line;
        :func:`settings_changes` says which keys changed)."""
        return _digest(_json(self.job_settings()[path]))

    def checks_settings(self) -> dict[str, Any]:
        """What the checks job reads of the configuration (:class:`~bidstrain.config.
        ChecksJobConfig`), and nothing else: changing it reruns the checks (and training);
        trainer-only keys (train.lr, model size, logging...) rerun training alone."""
        return {
            "checks": to_plain(self.config.checks),
            "train": self.config.train.checked(),
            "ddof": self.config.normalize.ddof,
            "world_size": self.world_size,
        }

    def checks_arguments(self) -> list[str]:
        """Arguments of the checks job that grow with the number of subjects."""
        return [
            "--training",
            *(store for stores in self.training.values() for store in stores),
            "--validation",
            *(store for stores in self.validation.values() for store in stores),
            "--subject-stores",
            *self.normalized_stores,
            *(["--stimuli", *self.checked_stimuli] if self.checked_stimuli else []),
            *(
                ["--parcel-stores", *self.checked_parcel_stores]
                if self.checked_parcel_stores
                else []
            ),
        ]

    @property
    def checked_parcel_stores(self) -> list[str]:
        """With ``train.bold_input: parcels``, pairs of a voxel BOLD store the checks read
        (of training, validation and every subject) and the parcel store the model reads
        for it, flattened (``--parcel-stores`` of the checks job); empty otherwise."""
        if self.config.train.model.bold_input != "parcels":
            return []
        read = [
            *(store for stores in self.training.values() for store in stores),
            *(store for stores in self.validation.values() for store in stores),
            *self.normalized_stores,
        ]
        return [
            path
            for store in dict.fromkeys(read)
            if store in self._parcel_stores
            for path in (store, self._parcel_stores[store])
        ]

    @property
    def checked_stimuli(self) -> list[str]:
        """The aligned stimulus stores of the BOLD stores training and validation read:
        what the checks compare with BOLD (none unless ``stimuli.enabled``)."""
        read = {*self.training.get("bold", ()), *self.validation.get("bold", ())}
        return [
            path
            for target in self.alignment_targets
            if target.bold in read
            for path in target.outputs.values()
        ]

    def files(self) -> dict[str, str]:
        """Content of every file the plan writes at parse time, by path.

        JSON for the trainer, the jobs' settings and each normalize job's images; argument
        files (one argument a line, read by argparse's ``@file`` syntax) for the other
        jobs whose lists grow with the subjects.
        """
        files = {
            paths.DATASET_DESCRIPTION: _json(self.dataset_description()),
            paths.plan_stores(self.experiment): _json(self.store_lists()),
            paths.plan_checks_arguments(self.experiment): _lines(self.checks_arguments()),
            paths.PLAN_INGEST_ARGS: _lines(self.manifest_arguments()),
            **{path: _json(content) for path, content in self.job_settings().items()},
        }
        for job in self.jobs.values():
            files[job.spec_file] = job.spec()
        for group in self.averages:
            files[group.members_file] = _lines(group.arguments())
            files[group.stores_file] = _lines(group.members)
        for group in self.figure_groups.values():
            files[group.tables_file] = _lines(group.tables)
        if self.stimuli is not None:
            files[paths.PLAN_ALIGN_SPEC] = _json(self.alignment_spec())
        if self.encoding_enabled:
            files[paths.plan_encoding_inputs(self.experiment)] = _json(self.encoding_inputs())
        return files

    @property
    def encoding_enabled(self) -> bool:
        """Whether the encoding rules exist: ``encoding.enabled`` with stimuli."""
        return self.config.encoding.enabled and self.stimuli is not None

    def encoding_settings(self) -> dict[str, Any]:
        """What the encoding job reads of the configuration: ``encoding`` but
        ``figure_targets``, which only the figures' job reads (changing it redraws them and
        nothing else), and the seed."""
        encoding = to_plain(self.config.encoding)
        del encoding["figure_targets"]
        return {"encoding": encoding, "seed": self.config.train.run.seed}

    def encoding_inputs(self) -> dict[str, Any]:
        """Each cross-subject average's BOLD store (its parcel average with
        ``encoding.target: parcels``) and aligned stimulus stores, of the kinds of
        ``encoding.kinds`` it has (:mod:`bidstrain.encoding.stores`)."""
        aligned = self.aligned_average_stimuli
        if not aligned:
            raise BidstrainError(
                "encoding.enabled: the encoding model maps stimuli to cross-subject averages, "
                "but no average has aligned stimuli: set average.mode cross_subject and give "
                "the BOLD runs stimuli (stim_file in their events.tsv)"
            )
        parcels = self.config.encoding.target == "parcels"
        if parcels and self.atlas is None:
            raise BidstrainError(
                "encoding.target is parcels but no parcellation is configured: set "
                "parcellation.name and parcellation.path, or encoding.target: voxels"
            )
        stores = {
            group.name: group.parcel_store if parcels else group.store for group in self.averages
        }
        return {
            "averages": {
                name: {"bold": stores[name], **kinds} for name, kinds in sorted(aligned.items())
            }
        }

    def encoding_figure_arguments(self) -> list[str]:
        """The encoding figures' ``--bold`` (the first average's voxel store: the grid of
        the map) and, with ``encoding.target: parcels``, ``--atlas`` (the parcellation
        whose parcels the map paints; with a label image per run, the first member's)."""
        first = next(iter(self.encoding_inputs()["averages"]))
        group = next(group for group in self.averages if group.name == first)
        if self.config.encoding.target != "parcels":
            return ["--bold", group.store]
        atlas = self.atlas
        image = str(atlas.image)
        if atlas.per_run:
            image = next(
                i.parcels["atlas_image"]
                for job in self.jobs.values()
                for i in job.images
                if i.store == group.members[0]
            )
        return [
            "--bold",
            group.store,
            "--atlas",
            atlas.name,
            image,
            str(atlas.labels),
            atlas.space,
        ]

    def encoding_apply_features(self, average: str) -> list[str]:
        """``kind=store`` of an average's aligned stores: the apply job's ``--features``."""
        stores = self.encoding_inputs()["averages"][average]
        return [f"{kind}={path}" for kind, path in stores.items() if kind != "bold"]

    @property
    def encoding_targets(self) -> list[str]:
        """What target ``encoding`` builds: the model and its outputs, the figures, and
        the predicted BOLD of every average with aligned stimuli."""
        experiment = self.experiment
        names = (*ENCODING_OUTPUTS, *ENCODING_FIGURES)
        return [
            *(paths.encoding_output(experiment, name) for name in names),
            *(
                paths.encoding_prediction(experiment, average)
                for average in self.encoding_inputs()["averages"]
            ),
        ]

    @property
    def encoding_stores(self) -> list[str]:
        """The stores the encoding job reads (its rule's inputs)."""
        return [
            path
            for average in self.encoding_inputs()["averages"].values()
            for path in average.values()
        ]

    def validate_files(self) -> dict[str, str]:
        """The argument file of the validate job (:data:`paths.PLAN_VALIDATE_ARGS`):
        every image the normalize jobs read, and the atlas they read onto the BOLD runs."""
        images = (str(image.image.path) for job in self.jobs.values() for image in job.images)
        atlas = ["--atlas", json.dumps(self.atlas.to_json())] if self.atlas else []
        return {paths.PLAN_VALIDATE_ARGS: _lines(["--images", *images, *atlas])}

    # ---- stimuli (bidstrain.stimuli; rules in workflow/rules/stimuli.smk) --------------

    @property
    def stimulus_names(self) -> list[str]:
        """Every stimulus file of the runs, by its path in the dataset (the rule's
        ``{stimulus}`` wildcard), once each; none unless ``stimuli.enabled``."""
        if self.stimuli is None:
            return []
        root = self.stimuli_root
        return [path.relative_to(root).as_posix() for path in self.stimuli.stimuli]

    @property
    def stimuli_root(self) -> Path:
        """The dataset the stimulus names are relative to (``stimuli.raw_dir``, or
        ``bids_dir``)."""
        return Path(self.config.stimuli.raw_dir or self.config.bids_dir).absolute()

    @property
    def stimulus_stores(self) -> list[str]:
        """The feature stores of target ``stimuli``: one per stimulus file."""
        return [paths.stimulus_features(name) for name in self.stimulus_names]

    def stimulus_arguments(self, name: str) -> str:
        """The feature job's options for stimulus ``name``: its TR (the runs' that
        presented it) and the ``stimuli`` keys of its kind alone, so that changing a
        video key reruns the films' jobs, not the transcripts'."""
        stimulus = self.stimuli.stimuli[self.stimuli_root / name]
        config = self.config.stimuli.features
        if stimulus.kind == "media":
            options = {
                "video-size": " ".join(map(str, config.video_size)),
                "video-colour": config.video_colour,
                "audio-n-mels": config.audio_n_mels,
                "audio-window": config.audio_window,
                "audio-hop": config.audio_hop,
                "audio-rate": config.audio_rate,
            }
        else:
            options = {
                "text-method": config.text_method,
                "text-embeddings": shlex.quote(config.text_embeddings),
                "text-n-features": config.text_n_features,
            }
        options = {"tr": stimulus.repetition_time, **options}
        return " ".join(f"--{key} {value}" for key, value in options.items())

    def stimulus_embeddings(self, name: str) -> list[str]:
        """The word-vector table the feature job of transcript ``name`` reads
        (``stimuli.text_embeddings`` with ``text_method: embeddings``; none otherwise): an
        input of the job, so that a changed table reruns it."""
        stimulus = self.stimuli.stimuli[self.stimuli_root / name]
        config = self.config.stimuli.features
        text_vectors = stimulus.kind == "text" and config.text_method == "embeddings"
        return [config.text_embeddings] if text_vectors else []

    # ---- aligned stimuli (bidstrain.stimuli.alignment; rule align_stimuli) --------------

    @cached_property
    def alignment_targets(self) -> tuple[AlignTarget, ...]:
        """Every BOLD store with stimuli, subject runs then averages, with the aligned
        store of each kind its stimuli have; none unless ``stimuli.enabled``.

        Raises
        ------
        BidstrainError
            When the members of an average presented different stimuli, or the same at
            onsets more than one frame apart (naming the subjects).
        """
        if self.stimuli is None:
            return ()
        from bidstrain.stimuli.align import same_presentations
        from bidstrain.stimuli.alignment import AlignTarget

        bold = {
            i.store: i for job in self.jobs.values() for i in job.images if i.image.suffix == "bold"
        }
        runs = {store: self.stimuli.runs.get(image.image.prefix) for store, image in bold.items()}

        def target(label, store, group, members, heldout, run, outputs):
            return AlignTarget(
                label=label,
                bold=store,
                group=group,
                subjects=tuple(bold[m].image.subject for m in members),
                heldout=heldout,
                source_tr=self.config.time.target_tr or run.repetition_time,
                events=run.events,
                features={str(e.stimulus): self._feature_store(e.stimulus) for e in run.events},
                outputs={kind: outputs(kind) for kind in self._kinds(run)},
            )

        targets = [
            target(
                " ".join(Path(image.image.prefix).name.split("_")),
                store,
                "subject",
                [store],
                image.heldout,
                runs[store],
                lambda kind, image=image: paths.aligned_run_stimulus(image.image, kind),
            )
            for store, image in bold.items()
            if runs[store] is not None
        ]
        for group in self.averages:
            members = {bold[m].image.subject: runs[m] for m in group.members}
            shown = [run for run in members.values() if run is not None]
            if not shown:
                continue
            frame = self.config.time.target_tr or shown[0].repetition_time
            same_presentations(members, frame, group.name)
            targets.append(
                target(
                    f"average {group.name}",
                    group.store,
                    "average",
                    group.members,
                    all(bold[m].heldout for m in group.members),
                    shown[0],
                    lambda kind, name=group.name: paths.aligned_average_stimulus(name, kind),
                )
            )
        return tuple(targets)

    def _feature_store(self, stimulus: Path) -> str:
        return paths.stimulus_features(stimulus.relative_to(self.stimuli_root).as_posix())

    def _kinds(self, run: Any) -> list[str]:
        """The feature kinds of a run's stimuli, in the order of :data:`STIMULUS_KINDS`."""
        have = {k for e in run.events for k in self.stimuli.stimuli[e.stimulus].kinds}
        return [kind for kind in STIMULUS_KINDS if kind in have]

    @property
    def aligned_stimulus_stores(self) -> list[str]:
        """Every aligned store: the outputs of rule ``align_stimuli``."""
        return [path for target in self.alignment_targets for path in target.outputs.values()]

    @property
    def aligned_average_stimuli(self) -> dict[str, dict[str, str]]:
        """The aligned store of each kind of each average, by the average's name (a
        model rule's inputs next to :attr:`average_stores`)."""
        prefix = "average "
        return {
            target.label[len(prefix) :]: dict(target.outputs)
            for target in self.alignment_targets
            if target.group == "average"
        }

    @property
    def aligned_run_stimuli(self) -> dict[str, dict[str, str]]:
        """The aligned store of each kind of each subject run, by its BOLD store."""
        return {
            target.bold: dict(target.outputs)
            for target in self.alignment_targets
            if target.group == "subject"
        }

    @property
    def alignment_inputs(self) -> list[str]:
        """What the alignment job waits for: every feature store, the normalize table of
        each subject with stimuli (the job's output; its stores come with it) and each
        average store it aligns to."""
        features = {p for target in self.alignment_targets for p in target.features.values()}
        subjects = {
            s
            for target in self.alignment_targets
            if target.group == "subject"
            for s in target.subjects
        }
        averages = [target.bold for target in self.alignment_targets if target.group == "average"]
        return [
            *sorted(features),
            *(self.jobs[subject].table for subject in sorted(subjects)),
            *averages,
        ]

    def alignment_spec(self) -> dict[str, Any]:
        """The alignment job's spec (:mod:`bidstrain.stimuli.alignment`)."""
        from bidstrain.stimuli.align import DEFINITION

        return {
            "definition": DEFINITION,
            "stimuli": to_plain(self.config.stimuli),
            "targets": [target.to_json() for target in self.alignment_targets],
        }

    # ---- embed (bidstrain.embed; rules in workflow/rules/embed.smk) --------------------

    @property
    def embed_images(self) -> list[ImageJob]:
        """The images the embed job embeds, of the trained modalities: every image of
        the ``embed.participant_label`` subjects, or by default the validation images
        (held-out BOLD runs of ``normalize.heldout``, T1w/DWI of ``train.heldout``)."""
        chosen = self.config.embed.participant_label
        images = [
            image
            for job in self.jobs.values()
            for image in job.images
            if image.image.suffix in self.training
        ]
        if chosen:
            return [image for image in images if image.image.subject in chosen]
        validation = {store for stores in self.validation.values() for store in stores}
        return [image for image in images if image.heldout or image.store in validation]

    @property
    def embed_inputs(self) -> list[str]:
        """The normalize tables of the embedded stores."""
        subjects = dict.fromkeys(image.image.subject for image in self.embed_images)
        stimuli = self.embed_stimuli
        return [
            *(self.jobs[subject].table for subject in subjects),
            *sorted({p for kinds in stimuli.values() for p in kinds.values()}),
        ]

    @property
    def embed_stimuli(self) -> dict[str, dict[str, str]]:
        """The aligned stores of ``train.stimuli`` of each embedded BOLD run that has
        them, by its store: the embed job compares their preparation with the model's."""
        kinds = self.config.train.model.stimuli
        if not kinds:
            return {}
        aligned = self.aligned_run_stimuli
        return {
            image.store: {k: aligned[image.store][k] for k in kinds if k in aligned[image.store]}
            for image in self.embed_images
            if image.store in aligned
        }

    @property
    def embed_targets(self) -> list[str]:
        """What target ``embed`` builds: the embedding table and the figure."""
        return [paths.embed_table(self.experiment), paths.embed_figure(self.experiment)]

    def embed_files(self) -> dict[str, str]:
        """The embed job's JSON (:func:`paths.plan_embed`): the stores to embed (as the
        trainer reads them: with ``train.bold_input: parcels`` a BOLD run's parcel store)
        and their outputs, what the configuration expects of the model (a model that
        disagrees is refused), and the job's settings
        (:class:`~bidstrain.config.EmbedJobConfig`)."""
        stimuli = self.embed_stimuli
        images = [
            {
                "modality": image.image.suffix,
                "store": self._trainer_bold(image.store)
                if image.image.suffix == "bold"
                else image.store,
                "out": paths.embedding_store(self.experiment, image.image),
                **({"stimuli": stimuli[image.store]} if image.store in stimuli else {}),
            }
            for image in self.embed_images
        ]
        return {
            paths.plan_embed(self.experiment): _json(
                {
                    "expect": expectation(self.config).to_dict(),
                    "images": images,
                    "settings": {
                        "embed": to_plain(self.config.embed),
                        "max_scale_ratio": self.config.checks.max_scale_ratio,
                        "seed": self.config.train.run.seed,
                    },
                }
            )
        }


def settings_changes(settings: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Which keys of each job's settings (:meth:`Plan.job_settings`) differ from its file
    as the previous parse wrote it, one line per file (none on a first parse):
    ``train settings changed: lr 0.001 -> 0.002``. Call it before the files are
    rewritten."""
    lines = []
    for path, new in settings.items():
        try:
            old = json.loads(Path(path).read_text())
        except FileNotFoundError:
            continue
        except (OSError, json.JSONDecodeError):
            old = {}
        changes = setting_changes(old, to_plain(new))
        if changes:
            lines.append(f"{Path(path).stem} settings changed: " + "; ".join(changes))
    return lines


def _stimuli(config: Config, index: BidsIndex, bold: Sequence[BidsFile]) -> StimulusIndex | None:
    """The stimuli of the BOLD runs, with ``stimuli.enabled``.

    Raises
    ------
    BidstrainError
        When no BOLD run presented a stimulus (an events file with a ``stim_file``).
    """
    if not config.stimuli.enabled:
        return None
    from bidstrain.stimuli.index import StimulusIndex

    raw_dir = config.stimuli.raw_dir
    raw = BidsIndex.build(raw_dir) if raw_dir else None
    found = StimulusIndex.build(
        index, bold, config.stimuli.length_tolerance, config.time.target_tr, raw
    )
    if bold and not found.runs:
        raise BidstrainError(
            f"config stimuli.enabled: none of the {len(bold)} BOLD runs has an events file "
            f"with a stim_file in {raw_dir or config.bids_dir} (a derivative such as "
            "fMRIPrep's holds neither events files nor stimuli/: set stimuli.raw_dir to the "
            "raw dataset)"
        )
    _check_word_vectors(config, found)
    return found


def _check_word_vectors(config: Config, found: StimulusIndex) -> None:
    """With ``stimuli.text_method: embeddings`` and a transcript to read, the table of
    ``stimuli.text_embeddings`` must be a file: said with the dry run, not by Snakemake
    as a missing input of every transcript's job.

    Raises
    ------
    BidstrainError
        Naming the key and the path.
    """
    features = config.stimuli.features
    if features.text_method != "embeddings":
        return
    if not any(stimulus.kind == "text" for stimulus in found.stimuli.values()):
        return
    table = features.text_embeddings
    if not table or not Path(table).is_file():
        raise BidstrainError(
            f"config stimuli.text_method is embeddings but stimuli.text_embeddings "
            f"{table!r} is not a file: give a table of word vectors (a word, then its "
            "values, one word a line: GloVe's text format), or text_method: hashing"
        )


def write_plan(files: Mapping[str, str]) -> dict[str, str]:
    """Write the plan's files at their paths (:func:`write_if_changed`), and each version
    once more as a snapshot named by its content's hash (:func:`paths.plan_snapshot`),
    which is what the jobs read.

    Every parse writes the plan, dry runs and runs refused for Snakemake's lock included:
    a dry run with other settings while a workflow runs rewrites the files at their paths,
    but a job that workflow planned reads its own snapshot, so it runs with the settings
    it was planned with. Snapshots are never rewritten nor removed (a few kB each; delete
    ``results/plan/snapshots/`` when no workflow runs).

    Returns
    -------
    dict
        ``{path: snapshot path}``.
    """
    write_if_changed(files)
    snapshots = {}
    for path, content in files.items():
        snapshots[path] = paths.plan_snapshot(path, _digest(content))
        if not Path(snapshots[path]).is_file():
            write_text_atomic(Path(snapshots[path]), content)
    return snapshots


def write_if_changed(files: Mapping[str, str]) -> list[str]:
    """Write each file whose content differs from what is on disk (atomically).

    An unchanged file keeps its modification time, so Snakemake reruns a job reading it
    only when its content changed.

    Returns
    -------
    list of str
        The paths written.
    """
    written = []
    for path, content in files.items():
        target = Path(path)
        if target.is_file() and target.read_text() == content:
            continue
        write_text_atomic(target, content)
        written.append(path)
    return written


# ---- deciding functions ------------------------------------------------------------------


def figure_group_of(subject: str, groups: int) -> int:
    """The figure group of a subject, from a hash of its label alone: adding or removing
    a subject changes no other subject's group (and redraws no other group's figures).

    Parameters
    ----------
    subject : str
        The subject's label (without ``sub-``).
    groups : int
        The number of groups (``report.normalize_groups``).

    Returns
    -------
    int
        ``0 <= group < groups``: the label's SHA-256, modulo ``groups``.
    """
    digest = hashlib.sha256(subject.encode()).digest()
    return int.from_bytes(digest[:8], "big") % groups


def _figure_groups(subjects: Sequence[str], groups: int) -> dict[str, FigureGroup]:
    """The figure groups that have subjects (fewer than ``groups`` with few subjects), by
    name, in order."""
    members: dict[int, list[str]] = {}
    for subject in subjects:
        members.setdefault(figure_group_of(subject, groups), []).append(subject)
    width = len(str(groups - 1))
    named = (FigureGroup(f"{index:0{width}d}", tuple(members[index])) for index in sorted(members))
    return {group.name: group for group in named}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True) + "\n"


def _lines(arguments: Iterable[str]) -> str:
    return "".join(f"{argument}\n" for argument in arguments)


def _select(
    index: BidsIndex, config: Config, modality: str, kind: derivatives.DatasetKind
) -> list[BidsFile]:
    """The images of a modality: of a pipeline's outputs, the preprocessed one of each run
    in the configured ``space`` (the ICA-AROMA denoised run for the ``ica_aroma``
    confounds strategy, which nilearn reads from it)."""
    if modality not in config.modalities:
        return []
    images = index.select(modality, task=config.tasks if modality == "bold" else ())
    if kind.is_derivative:
        aroma = modality == "bold" and config.normalize.confounds.strategy == "ica_aroma"
        desc = derivatives.AROMA_DESC if aroma else "preproc"
        space = derivatives.parse_space(config.space)
        images = derivatives.select_preproc(
            images, space, modality, desc=desc, dataset=index.images
        )
    return select_echo(select_part(images, config.part), config.echo)


def _require_images(index: BidsIndex, config: Config, subjects: Sequence[str]) -> None:
    """Stop when a subject has no image of the configured modalities, unless it has no
    MRI folder at all (:data:`MRI_DATATYPES`): the EEG- or MEG-only participants of a
    multimodal dataset and MEG's ``sub-emptyroom`` are left out with a warning."""
    if not index.subjects:
        if next(index.root.glob("sub-*"), None) is not None:
            problem = "config participant_label and exclude_participant_label leave no subject"
        elif next(index.root.glob("tpl-*"), None) is not None:
            problem = (
                "no subject folder (sub-<label>): a template or atlas dataset (tpl-<label> "
                "folders) has no participants to train on; set bids_dir to a dataset of them"
            )
        else:
            problem = "no subject folder (sub-<label>); set bids_dir to a dataset's root"
        raise BidstrainError(problem, path=index.root)
    without = sorted(set(index.subjects) - set(subjects))
    datatypes = {subject: index.datatypes(subject) for subject in without}
    other = [s for s in without if datatypes[s] and datatypes[s].isdisjoint(MRI_DATATYPES)]
    if other:
        log.warning(
            "bidstrain: %s: no anat, func or dwi folder; left out",
            ", ".join(f"sub-{s} ({'/'.join(sorted(datatypes[s]))})" for s in other),
        )
    empty = [s for s in without if s not in other]
    if empty:
        raise BidstrainError(
            f"subject(s) {', '.join(f'sub-{s}' for s in empty)} in {index.root} have no "
            f"{' or '.join(config.modalities)} image (add images or list them in "
            "exclude_participant_label)"
        )
    if not subjects:
        raise BidstrainError(
            "no subject has an anat, func or dwi folder: not an MRI dataset (set bids_dir to one)",
            path=index.root,
        )


def _entity_matches(key: str, value: str | None, wanted: Sequence[str]) -> bool:
    """Whether an image's entity value is one of ``wanted``; index entities
    (:data:`INDEX_ENTITIES`) compare as numbers, so ``run: ["2"]`` selects ``run-02``."""
    if value is None:
        return False
    if value in wanted:
        return True
    return (
        key in INDEX_ENTITIES
        and value.isdigit()
        and int(value) in {int(w) for w in wanted if w.isdigit()}
    )


def _is_heldout(image: BidsFile, heldout: Mapping[str, Sequence[str]]) -> bool:
    return bool(heldout) and all(
        _entity_matches(key, image.entities.get(key), values) for key, values in heldout.items()
    )


def _warn_unmatched(key: str, selection: Mapping, images: Sequence[BidsFile]) -> None:
    """Warn when a held-out selection ``key`` selects none of ``images`` (there is then
    no validation data of that kind), naming the values the images have."""
    if not selection or not images or any(_is_heldout(image, selection) for image in images):
        return
    found = {
        name: sorted({image.entities[name] for image in images if name in image.entities})
        for name in selection
    }
    log.warning(
        "bidstrain: config %s %s selects none of the %d %s image(s) (their values: %s): "
        "no validation data of them",
        key,
        "{"
        + ", ".join(f"{name}: [{', '.join(values)}]" for name, values in selection.items())
        + "}",
        len(images),
        "/".join(sorted({image.suffix for image in images})),
        "; ".join(f"{name}: {', '.join(values) or 'none'}" for name, values in found.items()),
    )


def fitting_runs(image: BidsFile, runs: Iterable[BidsFile], heldout: Mapping) -> list[BidsFile]:
    """The runs whose statistics a held-out run is normalized with.

    The same subject's runs of the same task and acquisition (:func:`acquisition`) that
    are not held out: those of the same session when there are any (same scanner set-up),
    else those of its other sessions.

    Parameters
    ----------
    image : BidsFile
        The held-out run.
    runs : iterable of BidsFile
        The subject's BOLD runs that are not held out.
    heldout : mapping
        ``normalize.heldout``, for the error message.

    Raises
    ------
    BidstrainError
        When no such run is left, naming the subject and the ``normalize.heldout`` config.
    """
    wanted = acquisition(image)
    same_task = [run for run in runs if acquisition(run) == wanted]
    same_session = [run for run in same_task if run.session == image.session]
    if not same_task:
        name = paths.average_name(wanted)
        raise BidstrainError(
            f"held-out run has no {name} run left to fit statistics on: config "
            f"normalize.heldout {dict(heldout)} selects every such run of sub-{image.subject} "
            "(hold out fewer runs, or leave the subject out with exclude_participant_label)",
            path=image.path,
            subject=image.subject,
        )
    return same_session or same_task


def acquisition(image: BidsFile) -> dict[str, str]:
    """The entities that tell a BOLD acquisition apart (``task``, ``acq``, ``ce``, ``rec``,
    ``dir``...): its runs share a protocol and a grid, across subjects and sessions. Not
    the subject, session or run, nor a derivative's space and ``desc`` (one per dataset)."""
    return {k: v for k, v in image.entities.items() if k not in _NOT_ACQUISITION}


_NOT_ACQUISITION = frozenset({"sub", "ses", "run", "desc", *derivatives.SPACE_ENTITIES})


def _mask(config: Config, index: BidsIndex, kind: derivatives.DatasetKind, image: BidsFile) -> str:
    """The mask keyword or file of an image; ``auto`` is the pipeline's brain mask for
    fMRIPrep's and QSIPrep's outputs, else the modality's computed mask."""
    option = config.normalize.mask_option(image.suffix)
    if option == "auto":
        if kind.ships_brain_masks:
            return str(derivatives.brain_mask(index, image))
        return DEFAULT_MASKS[image.suffix]
    if not is_pattern(option):
        return option
    return resolve_pattern(option, image.entities, config.bids_dir, MASK_KEYS[image.suffix])


def _confounds(config: Config, image: BidsFile) -> str | None:
    """fMRIPrep's confounds table of a BOLD run, when a strategy regresses them."""
    if image.suffix != "bold" or config.normalize.confounds.strategy == "none":
        return None
    return str(derivatives.confounds_file(image))


def _parcels(
    atlas: AtlasFiles | None, image: BidsFile, runs: Sequence[BidsFile], bids_dir: str
) -> dict[str, Any] | None:
    """The parcel outputs of a BOLD run (None without an atlas, or for another modality);
    a held-out run's name the parcel stores of the ``runs`` its statistics come from; with
    a label image per run (:attr:`AtlasFiles.per_run`), ``atlas_image``: the run's.

    Raises
    ------
    BidstrainError
        When the run is not in the atlas's space, or lacks an entity of its pattern.
    """
    if atlas is None or image.suffix != "bold":
        return None
    check_space(atlas, image.entities.get("space"), image=image.path, subject=image.subject)
    outputs = {
        "store": paths.parcel_store(image, atlas.name),
        "timeseries": paths.parcel_timeseries(image, atlas.name),
        "coverage": paths.parcel_coverage(image, atlas.name),
        "stats_from": [paths.parcel_store(run, atlas.name) for run in runs],
    }
    if atlas.per_run:
        outputs["atlas_image"] = str(atlas.for_run(image.entities, bids_dir).image)
    return outputs


def _normalize_jobs(
    config: Config,
    index: BidsIndex,
    kind: derivatives.DatasetKind,
    images: Sequence[BidsFile],
    atlas: AtlasFiles | None = None,
) -> dict[str, NormalizeJob]:
    """The normalize job of every subject; held-out BOLD runs take their statistics from
    the subject's other runs (:func:`fitting_runs`), normalized before them in the job."""
    selection = config.normalize.heldout
    by_subject: dict[str, list[BidsFile]] = {}
    for image in images:
        by_subject.setdefault(image.subject, []).append(image)

    def job(image: BidsFile, runs: Sequence[BidsFile] = ()) -> ImageJob:
        store = paths.normalized_store(image)
        mask = _mask(config, index, kind, image)
        stats_from = tuple(paths.normalized_store(run) for run in runs)
        parcels = _parcels(atlas, image, runs, config.bids_dir)
        return ImageJob(image, store, mask, stats_from, _confounds(config, image), parcels)

    _warn_unmatched(
        "normalize.heldout", selection, [image for image in images if image.suffix == "bold"]
    )
    jobs = {}
    for subject in sorted(by_subject):
        own = by_subject[subject]
        held = [image.suffix == "bold" and _is_heldout(image, selection) for image in own]
        training = [image for image, h in zip(own, held, strict=True) if not h]
        ordered = [job(image) for image in training]
        for image in (image for image, h in zip(own, held, strict=True) if h):
            runs = fitting_runs(image, [run for run in training if run.suffix == "bold"], selection)
            ordered.append(job(image, runs))
        jobs[subject] = NormalizeJob(subject, tuple(ordered))
    return jobs


def _check_bold_input(config: Config, atlas: AtlasFiles | None, has_bold: bool) -> None:
    """``train.bold_input: parcels`` needs a parcellation.

    Raises
    ------
    BidstrainError
        Naming the keys to change.
    """
    if config.train.model.bold_input != "parcels" or not has_bold:
        return
    if atlas is None:
        raise BidstrainError(
            "config train.bold_input is parcels but no parcellation is configured: set the "
            "parcellation section (an atlas in the BOLD runs' space), or train.bold_input: "
            "voxels"
        )


def _check_loader_memory(
    config: Config,
    training: Mapping[str, Sequence[str]],
    validation: Mapping[str, Sequence[str]],
    *,
    gpus: int,
    mem_mb: int,
) -> None:
    """The loader batch buffers of a node's ranks (one per GPU, one without GPUs) fit the
    training job's memory per node, ``mem_mb`` MB (10^6 bytes; SLURM reads MiB, which
    leaves the rest of the process under 5 %).

    A rank's buffers are those of its training loader (``train.num_workers`` processes)
    and, with validation stores, of its validation loader (the main process):
    :func:`~bidstrain.train.ring_size.loader_bytes` of the largest sample of the modalities
    each reads (:func:`~bidstrain.train.ring_size.largest_sample`; parcel windows are
    skipped: their parcel count is not known before normalization, and they are tiny),
    their page-locked copies included on GPUs with ``train.pin_memory``.

    Raises
    ------
    BidstrainError
        Naming the figures and the keys to change.
    """
    train, loader = config.train, config.train.loader
    pinned = gpus > 0 and loader.pin_memory
    sample = largest_sample(train, training)
    training_bytes = loader_bytes(train, sample, workers=loader.num_workers, pinned=pinned)
    shared_bytes = loader_bytes(train, sample, workers=loader.num_workers)
    validation_bytes = 0
    if validation:
        validation_sample = largest_sample(train, validation)
        validation_bytes = loader_bytes(train, validation_sample, workers=0, pinned=pinned)
    ranks = max(1, gpus)
    node = ranks * (training_bytes + validation_bytes)
    if node <= mem_mb * 1e6:
        return
    slots = ring_slots(
        grad_accum_steps=train.optimizer.grad_accum_steps,
        prefetch_factor=loader.prefetch_factor,
        workers=loader.num_workers,
    )
    raise BidstrainError(
        f"the loader batch buffers of the training job need {node / 1e9:.1f} GB per node, "
        f"more than resources.train.mem_mb ({mem_mb} MB): {ranks} rank(s) x "
        f"{(training_bytes + validation_bytes) / 1e9:.1f} GB; a rank's training loader "
        f"holds {training_bytes / 1e9:.1f} GB: {max(loader.num_workers, 1)} process(es) "
        f"(train.num_workers {loader.num_workers}) x {slots} buffers "
        f"(train.grad_accum_steps {train.optimizer.grad_accum_steps} + 1 + "
        f"train.prefetch_factor {loader.prefetch_factor} with workers) x train.batch_size "
        f"{loader.batch_size} samples x {4 * sample / 1e6:.1f} MB (the largest sample; "
        f"train.window {train.model.window} BOLD frames)"
        + (
            f", plus {(training_bytes - shared_bytes) / 1e9:.1f} GB of page-locked "
            "copies of the workers' batches (train.pin_memory)"
            if pinned and loader.num_workers
            else ""
        )
        + f"; its validation loader {validation_bytes / 1e9:.1f} GB. Lower train.batch_size, "
        "train.num_workers, train.prefetch_factor or train.window, "
        + ("set train.pin_memory: false, " if pinned else "")
        + "or raise resources.train.mem_mb"
    )


def _check_train_stimuli(config: Config) -> None:
    """``train.stimuli`` needs the stimulus stage and BOLD.

    Raises
    ------
    BidstrainError
        Naming the keys to change.
    """
    kinds = list(config.train.model.stimuli)
    if not kinds:
        return
    if not config.stimuli.enabled:
        raise BidstrainError(
            f"config train.stimuli is {kinds} but stimuli.enabled is false: the stimulus "
            "features come from the stimuli stage (set stimuli.enabled: true, or "
            "train.stimuli: [])"
        )
    if "bold" not in config.modalities:
        raise BidstrainError(
            f"config train.stimuli is {kinds} but modalities {list(config.modalities)} has no "
            "bold: the stimulus features come with BOLD windows"
        )


def _average_groups(
    bold: Sequence[ImageJob], atlas: AtlasFiles | None = None
) -> tuple[AverageGroup, ...]:
    """One group per acquisition and run; index entities (:data:`INDEX_ENTITIES`) compare
    as numbers, so ``run-1`` and ``run-01`` of two subjects are one group, named after the
    first of the spellings (with a warning: BIDS asks one dataset for one)."""
    members: dict[tuple, list[ImageJob]] = {}
    spellings: dict[tuple, set[str]] = {}
    for job in bold:
        run = job.image.entities.get("run")
        entities = {**acquisition(job.image), **({"run": run} if run else {})}
        key = tuple(
            sorted(
                (k, str(int(v)) if k in INDEX_ENTITIES and v.isdigit() else v)
                for k, v in entities.items()
            )
        )
        members.setdefault(key, []).append(job)
        spellings.setdefault(key, set()).add(paths.average_name(entities))
    for names in spellings.values():
        if len(names) > 1:
            log.warning(
                "runs named %s are one acquisition (index entities compare as numbers): "
                "averaged together as %s",
                " and ".join(sorted(names)),
                min(names),
            )
    groups = sorted(
        ((min(spellings[key]), jobs) for key, jobs in members.items()), key=lambda g: g[0]
    )
    return tuple(
        AverageGroup(
            name,
            tuple(job.store for job in jobs),
            atlas.name if atlas else None,
            tuple(job.parcels["store"] for job in jobs) if atlas else (),
        )
        for name, jobs in groups
    )


def _volume_stores(
    images: Sequence[ImageJob], config: Config
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Training and validation stores of T1w or DWI: ``train.heldout`` selects the
    validation images by BIDS entities (a subject or a session, say); their normalization
    is their own either way (per volume).

    Raises
    ------
    BidstrainError
        When the selection leaves the modality images but no training image.
    """
    selection = config.train.loader.heldout
    _warn_unmatched("train.heldout", selection, [image.image for image in images])
    held = [_is_heldout(image.image, selection) for image in images]
    if images and all(held):
        raise BidstrainError(
            f"config train.heldout {dict(selection)} selects every {images[0].image.suffix} "
            "image for validation, leaving none to train on (hold out fewer subjects or "
            "sessions)"
        )
    return (
        tuple(image.store for image, h in zip(images, held, strict=True) if not h),
        tuple(image.store for image, h in zip(images, held, strict=True) if h),
    )


def _bold_stores(
    bold: Sequence[ImageJob], averages: Sequence[AverageGroup], validation: bool
) -> tuple[str, ...]:
    """BOLD stores training (or validation) reads: the average stores of its runs in
    cross_subject mode (when there are averages), else the subject stores."""
    stores = [job.store for job in bold if job.heldout == validation]
    if not averages:
        return tuple(stores)
    wanted = set(stores)
    return tuple(group.store for group in averages if not wanted.isdisjoint(group.members))
