"""Command line: ``python -m bidstrain.checks --training STORE ... --out-json ... --out-tsv ...``.

Runs every check on the stores training and validation read (and the subject stores behind
them), writes the summary, and with ``checks.strict`` exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bidstrain.checks import Check, with_findings
from bidstrain.checks.loss import NAME as LOSS
from bidstrain.checks.loss import check_loss_scale
from bidstrain.checks.normalization import check_normalization
from bidstrain.checks.plan import COUNTS, PLAN, check_counts, check_schedule
from bidstrain.checks.quality import check_quality
from bidstrain.checks.scale import check_scale
from bidstrain.checks.scan import StoreScan, raw_head, scan_store
from bidstrain.checks.stimuli import (
    by_bold_store,
    check_coverage,
    normalization_findings,
    read_stores,
    stimulus_samples,
)
from bidstrain.checks.summary import raise_on_failure, write_summary
from bidstrain.checks.windows import NAME as WINDOWS
from bidstrain.checks.windows import check_windows
from bidstrain.config import ChecksJobConfig
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.ingest.records import read_manifest

log = logging.getLogger("bidstrain.checks")


def manifest_by_image(path: str | Path) -> dict[str, dict[str, str]]:
    """Ingest manifest rows (:func:`bidstrain.ingest.records.read_manifest`) by resolved
    raw image path."""
    return {str(Path(row["path"]).resolve()): row for row in read_manifest(path)}


def read_settings(path: str | Path) -> ChecksJobConfig:
    """The typed content of the checks job's ``--settings`` file.

    Raises
    ------
    BidstrainError
        Naming the file, when it is unreadable or a setting is missing or wrong.
    """
    try:
        return ChecksJobConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise BidstrainError(f"cannot read the checks settings: {error}", path=path) from None
    except BidstrainError as error:
        raise BidstrainError(error.message, path=path) from None


def _guarded(name: str, run: Callable[[], Check]) -> Check:
    """Run a check; bad input it trips over becomes that check's failure."""
    try:
        return run()
    except BidstrainError as error:
        return Check(name, "fail", f"could not run: {error}", {})


def _normalized_samples(
    scans: Mapping[str, StoreScan], training: Mapping[str, Sequence[str]]
) -> dict[str, np.ndarray]:
    """Sampled values of the stores training reads, by modality."""
    return {m: np.concatenate([scans[p].sample for p in paths]) for m, paths in training.items()}


def _raw_samples(
    subjects: Sequence[StoreScan],
    raw_heads: Mapping[str, np.ndarray],
    training: Mapping[str, Sequence[str]],
) -> dict[str, np.ndarray]:
    """Sampled raw values of the images behind the training stores (held-out runs left
    out), by modality."""
    samples: dict[str, list[np.ndarray]] = {}
    for scan in subjects:
        if scan.modality in training and not scan.meta.heldout and scan.path in raw_heads:
            samples.setdefault(scan.modality, []).append(raw_heads[scan.path].ravel())
    return {m: np.concatenate(values) for m, values in samples.items()}


def run_checks(
    training: Sequence[str],
    validation: Sequence[str],
    subject_stores: Sequence[str],
    manifest: Mapping[str, Mapping[str, str]],
    config: ChecksJobConfig,
    stimuli: Sequence[str] = (),
    parcel_stores: Mapping[str, str] | None = None,
) -> list[Check]:
    """Every check, in order: scale, normalization, quality, BOLD windows (with
    ``train.window`` > 1), counts, plan, initial loss, and with stimuli their coverage.

    Parameters
    ----------
    training, validation : sequence of str
        Stores training and validation read (``Plan.training``, ``Plan.validation``).
    subject_stores : sequence of str
        Every subject store of the selected images (those behind the averages included).
    manifest : mapping
        :func:`manifest_by_image` of the ingest manifest.
    config : ChecksJobConfig
        What the checks read of the workflow configuration.
    stimuli : sequence of str
        The aligned stimulus stores of the BOLD stores training and validation read
        (:mod:`bidstrain.checks.stimuli`): their kinds join the scale table and the
        normalization check, and their coverage is a check of its own.
    parcel_stores : mapping, optional
        ``{voxel BOLD store: its parcel store}``: with ``train.bold_input: parcels``, the
        stores the model reads instead of the voxel stores of ``training`` and
        ``validation`` (and those behind their averages). They join the normalization
        check; the scale table and the initial loss take their values for BOLD.
    """
    settings, train = config.checks, config.train
    parcels_of = dict(parcel_stores or {})
    every = [*training, *validation, *subject_stores]
    scans, unreadable, raw_heads = _scan_stores(
        [*every, *(parcels_of[p] for p in every if p in parcels_of)], settings.sample_voxels
    )
    training_by_modality: dict[str, list[str]] = {}
    for path in training:
        if path in scans:
            training_by_modality.setdefault(scans[path].modality, []).append(path)
    # what the model reads: with parcel stores, those of the BOLD runs
    read_by_modality = {
        m: [parcels_of.get(p, p) for p in paths if parcels_of.get(p, p) in scans]
        for m, paths in training_by_modality.items()
    }
    trained = {*training, *(parcels_of[p] for p in training if p in parcels_of)}
    subjects = [s for s in scans.values() if not (s.is_average or s.is_parcels)]
    aligned = read_stores(stimuli)
    seen, raw = stimulus_samples(aligned)
    normalization = check_normalization(
        list(scans.values()),
        unreadable,
        raw_heads,
        training=trained,
        manifest=manifest,
        ddof=config.ddof,
        tolerance=settings.stats_tolerance,
        voxel_stores={parcels: scans.get(path) for path, parcels in parcels_of.items()},
    )
    if aligned:
        fails, values = normalization_findings(aligned, settings.stats_tolerance)
        ok = f"{len(aligned)} aligned stimulus stores z-scored with the training statistics"
        normalization = with_findings(normalization, fails, values, ok)
    checks = [
        check_scale(
            {**_normalized_samples(scans, read_by_modality), **seen},
            {**_raw_samples(subjects, raw_heads, training_by_modality), **raw},
            max_ratio=settings.max_scale_ratio,
        ),
        normalization,
        check_quality(
            [s for s in subjects if s.modality == "bold"],
            outlier_threshold=settings.outlier_threshold,
        ),
    ]
    coverage = [check_coverage(aligned)] if aligned else []
    if unreadable.keys() & trained:
        reason = "training stores are missing or incomplete (see the normalization check)"
        not_run = [Check(name, "fail", f"not run: {reason}") for name in (COUNTS, PLAN, LOSS)]
        return checks + not_run + coverage
    if train.model.window > 1:
        bold = [p for p in dict.fromkeys([*training, *validation]) if p in scans]
        checks.append(
            _guarded(
                WINDOWS,
                lambda: check_windows(
                    [scans[p] for p in bold if scans[p].modality == "bold"],
                    window=train.model.window,
                    strict=settings.strict,
                ),
            )
        )
    checks += _schedule_checks(training_by_modality, subjects, config)
    checks.append(
        _guarded(
            LOSS,
            lambda: check_loss_scale(
                read_by_modality,
                train,
                max_ratio=settings.max_scale_ratio,
                stimuli={
                    parcels_of.get(bold, bold): kinds
                    for bold, kinds in by_bold_store(aligned).items()
                },
            ),
        )
    )
    if aligned and not train.model.stimuli:
        # their scale is in the scale table
        checks[-1].values["stimuli"] = "not covered: train.stimuli is empty"
    return checks + coverage


def _scan_stores(
    paths: Sequence[str], sample_voxels: int
) -> tuple[dict[str, StoreScan], dict[str, str], dict[str, np.ndarray]]:
    """Scan each store once: ``(scans, unreadable, raw heads)``, the last two by path,
    with the reason a store could not be read and the first volumes of each subject
    store's raw image (where it can still be read)."""
    scans: dict[str, StoreScan] = {}
    unreadable: dict[str, str] = {}
    raw_heads: dict[str, np.ndarray] = {}
    for path in dict.fromkeys(paths):
        try:
            scans[path] = scan_store(path, sample_voxels=sample_voxels)
        except BidstrainError as error:
            unreadable[path] = str(error)
            continue
        if not (scans[path].is_average or scans[path].is_parcels):
            try:
                raw_heads[path] = raw_head(scans[path])
            except (OSError, nib.filebasedimages.ImageFileError) as error:
                log.warning("%s: cannot read its raw image: %s", path, error)
        log.info("scanned %s", path)
    return scans, unreadable, raw_heads


def _schedule_checks(
    training_by_modality: Mapping[str, list[str]],
    subjects: Sequence[StoreScan],
    config: ChecksJobConfig,
) -> list[Check]:
    """The counts check and the learning-rate plan check (on the counts' batches per
    epoch)."""
    train = config.train
    subject_samples: dict[str, int] = {}
    for scan in subjects:
        if not scan.meta.heldout:
            subject_samples[scan.modality] = subject_samples.get(scan.modality, 0) + scan.n_time
    counts, n_batches = check_counts(
        training_by_modality,
        batch_size=train.loader.batch_size,
        batching=train.loader.batching,
        world_size=config.world_size,
        subject_samples=subject_samples,
        window=train.model.window,
        stride=train.loader.window_stride,
    )
    plan = _guarded(
        PLAN,
        lambda: check_schedule(
            batches_per_epoch=n_batches,
            epochs=train.optimizer.epochs,
            grad_accum_steps=train.optimizer.grad_accum_steps,
            # Rates in units of train.lr: a positive peak rate scales every one of them
            # without changing a verdict, so train.lr stays out of this rule's params and
            # changing it reruns training only.
            lr=1.0,
            warmup_steps=train.optimizer.warmup_steps,
            min_lr_ratio=train.optimizer.min_lr_ratio,
        ),
    )
    return [counts, plan]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m bidstrain.checks",
        description=__doc__.splitlines()[0],
        fromfile_prefix_chars="@",
    )
    parser.add_argument("--training", nargs="+", required=True, help="stores training reads")
    parser.add_argument("--validation", nargs="*", default=[], help="stores validation reads")
    parser.add_argument("--subject-stores", nargs="*", default=[], help="every subject store")
    parser.add_argument(
        "--stimuli", nargs="*", default=[], help="aligned stimulus stores (stimuli.enabled)"
    )
    parser.add_argument(
        "--parcel-stores",
        nargs="*",
        default=[],
        help="pairs of a voxel BOLD store and the parcel store the model reads for it",
    )
    parser.add_argument("--manifest", required=True, help="results/ingest/manifest.tsv")
    parser.add_argument(
        "--settings", required=True, help="JSON file: what the checks read of the config"
    )
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-tsv", required=True)
    parser.add_argument("--copy-dir", help="also copy the summary here (kept after a failure)")
    args = parser.parse_args(argv)
    if len(args.parcel_stores) % 2:
        parser.error("--parcel-stores takes pairs: a voxel store, then its parcel store")
    config = read_settings(args.settings)
    checks = run_checks(
        args.training,
        args.validation,
        args.subject_stores,
        manifest_by_image(args.manifest),
        config,
        args.stimuli,
        dict(zip(args.parcel_stores[::2], args.parcel_stores[1::2], strict=True)),
    )
    write_summary(checks, args.out_json, args.out_tsv, copy_dir=args.copy_dir)
    for check in checks:
        log.log(
            logging.WARNING if check.status != "pass" else logging.INFO,
            "%s: %s: %s",
            check.name,
            check.status,
            check.message,
        )
    if config.checks.strict:
        summary = Path(args.copy_dir or Path(args.out_json).parent) / Path(args.out_json).name
        raise_on_failure(checks, summary_path=summary)


if __name__ == "__main__":
    run_cli(main)
