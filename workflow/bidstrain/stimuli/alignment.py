"""The alignment job: every BOLD run's stimulus features of each kind on the frames of its
BOLD store (subject runs and cross-subject averages), delayed, z-scored with statistics of
the training runs only, one aligned store per run and kind.

::

    python -m bidstrain.stimuli.alignment --spec results/plan/stimuli/align.json

The spec (written by the plan, :meth:`bidstrain.plan.Plan.alignment_spec`) holds the
``stimuli`` section and one entry per run: its BOLD store, the stimuli it presented (each
with its feature store, onset and duration), the TR the features are binned at, whether
it is held out, and the aligned store of each kind. Two passes, one run and kind at a time
(memory of one run's features): the first accumulates the statistics of the training runs,
per kind and separately for subject runs and averages; the second writes every store.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.config import StimuliConfig, load_section
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.io.store import (
    FeatureStore,
    read_feature_store,
    read_frames,
    write_aligned_store,
)
from bidstrain.stimuli.align import (
    ABSENT,
    DEFINITION,
    FeatureStats,
    FrameGrid,
    StatsAccumulator,
    align_run,
    seconds_without_stimulus,
)
from bidstrain.stimuli.index import Event

log = logging.getLogger("bidstrain.stimuli.alignment")


@dataclass(frozen=True)
class AlignTarget:
    """One BOLD store with stimuli: a subject's run or a cross-subject average."""

    label: str  # for messages: "sub-01 task-movie run-1", "average task-movie_run-1"
    bold: str  # its BOLD store
    group: str  # "subject" or "average": each has its own statistics
    subjects: tuple[str, ...]
    heldout: bool
    source_tr: float  # the TR the stimulus features are binned at
    events: tuple[Event, ...]
    features: Mapping[str, str]  # feature store by stimulus file
    outputs: Mapping[str, str]  # aligned store by kind

    def to_json(self) -> dict[str, Any]:
        """The target as the spec holds it."""
        return {
            "label": self.label,
            "bold": self.bold,
            "group": self.group,
            "subjects": list(self.subjects),
            "heldout": self.heldout,
            "source_tr": self.source_tr,
            "events": [
                {"stimulus": str(e.stimulus), "onset": e.onset, "duration": e.duration}
                for e in self.events
            ],
            "features": dict(self.features),
            "outputs": dict(self.outputs),
        }

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> AlignTarget:
        """A target of the spec."""
        events = tuple(
            Event(Path(e["stimulus"]), float(e["onset"]), float(e["duration"]))
            for e in values["events"]
        )
        return cls(
            label=values["label"],
            bold=values["bold"],
            group=values["group"],
            subjects=tuple(values["subjects"]),
            heldout=bool(values["heldout"]),
            source_tr=float(values["source_tr"]),
            events=events,
            features=dict(values["features"]),
            outputs=dict(values["outputs"]),
        )


def _aligned(
    target: AlignTarget, kind: str, stores: Mapping[Path, FeatureStore], config: StimuliConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, FrameGrid]:
    time, frame_time, meta = read_frames(target.bold)
    try:
        grid = FrameGrid.of_store(time, frame_time, meta.repetition_time)
    except ValueError as error:
        raise BidstrainError(str(error), path=target.bold) from None
    features, covered = align_run(
        target.events,
        stores,
        kind,
        grid,
        config.delay_method,
        config.delays,
        source_tr=target.source_tr,
        where={"path": target.bold, "subject": ",".join(target.subjects)},
    )
    return features, covered, time, grid


def _columns(n_features: int, config: StimuliConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each aligned column's delay (frames) and source feature."""
    if config.delay_method == "delays":
        n_source = n_features // len(config.delays)
        delays = np.repeat(np.asarray(config.delays, dtype=np.int64), n_source)
        return delays, np.tile(np.arange(n_source, dtype=np.int64), len(config.delays))
    return np.zeros(n_features, dtype=np.int64), np.arange(n_features, dtype=np.int64)


def fit_group_stats(
    targets: Sequence[AlignTarget], stores: Mapping[Path, FeatureStore], config: StimuliConfig
) -> dict[tuple[str, str], FeatureStats]:
    """First pass: the statistics of each (group, kind) from its training runs.

    Raises
    ------
    BidstrainError
        When a group of runs with a kind has no training run (every one held out).
    """
    accumulators: dict[tuple[str, str], StatsAccumulator] = {}
    for target in targets:
        for kind in target.outputs:
            accumulator = accumulators.setdefault((target.group, kind), StatsAccumulator())
            if not target.heldout:
                accumulator.add(target.bold, _aligned(target, kind, stores, config)[0])
    stats = {}
    for (group, kind), accumulator in accumulators.items():
        if not accumulator.runs:
            raise BidstrainError(
                f"every {group} run with {kind} stimuli is held out (normalize.heldout): "
                "their z-score statistics need a training run"
            )
        stats[group, kind] = accumulator.stats()
    return stats


def write_target(
    target: AlignTarget,
    kind: str,
    stores: Mapping[Path, FeatureStore],
    stats: FeatureStats,
    config: StimuliConfig,
) -> None:
    """Second pass: one aligned store."""
    raw, covered, time, grid = _aligned(target, kind, stores, config)
    delays, source = _columns(raw.shape[1], config)
    features = stats.apply(raw) if config.normalize else raw
    shown = [stores[e.stimulus] for e in target.events if kind in stores[e.stimulus].features]
    arrays = {
        "delay": delays,
        "source_feature": source,
        "mean": stats.mean,
        "std": stats.std,
        "constant": stats.constant,
        "raw_mean": raw.mean(axis=0),
        "raw_std": raw.std(axis=0),
        "raw_min": raw.min(axis=0),
        "raw_max": raw.max(axis=0),
    }
    attrs = {
        "kind": kind,
        "normalized": config.normalize,
        "delay_method": config.delay_method,
        "delays": list(config.delays) if config.delay_method == "delays" else [],
        "repetition_time": grid.width,
        "source_repetition_time": target.source_tr,
        "bold_store": target.bold,
        "label": target.label,
        "subjects": list(target.subjects),
        "heldout": target.heldout,
        "training_runs": list(stats.training_runs),
        "stimuli": [
            {"stimulus": str(e.stimulus), "onset": e.onset, "duration": e.duration}
            for e in target.events
            if kind in stores[e.stimulus].features
        ],
        "decoder": {
            **config.features.of_kind(kind),
            "units": shown[0].meta.units[kind],
            "shape": list(shown[0].meta.shapes[kind]),
        },
        "run_seconds": float(time.size * grid.width),
        "seconds_without_stimulus": seconds_without_stimulus(covered, grid.width),
        "alignment_definition": DEFINITION,
        "absent": ABSENT[kind],
    }
    write_aligned_store(target.outputs[kind], features, time, arrays, attrs)


def align_all(spec: Mapping[str, Any]) -> list[str]:
    """Write every aligned store of ``spec`` (see the module docstring); returns their
    paths."""
    if spec.get("definition") != DEFINITION:
        raise BidstrainError(
            f"the alignment spec was planned for alignment definition "
            f"{spec.get('definition', 1)}, this job computes definition {DEFINITION} "
            "(bidstrain.stimuli.align.DEFINITION): run Snakemake again, which plans it anew"
        )
    config: StimuliConfig = load_section("stimuli", spec["stimuli"])
    targets = [AlignTarget.from_json(values) for values in spec["targets"]]
    stores = {
        Path(stimulus): read_feature_store(path)
        for target in targets
        for stimulus, path in target.features.items()
    }
    stats = fit_group_stats(targets, stores, config)
    written = []
    for target in targets:
        for kind, path in target.outputs.items():
            write_target(target, kind, stores, stats[target.group, kind], config)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and write the aligned stores."""
    parser = argparse.ArgumentParser(
        prog="python -m bidstrain.stimuli.alignment", description=__doc__
    )
    parser.add_argument("--spec", required=True, help="the plan's alignment spec (JSON)")
    args = parser.parse_args(argv)
    written = align_all(json.loads(Path(args.spec).read_text()))
    log.info("%d aligned stimulus stores written", len(written))


if __name__ == "__main__":
    run_cli(main)
