"""The encoding job: ``python -m bidstrain.encoding`` (or under ``torchrun``, through
``python -m bidstrain.train.launch --module bidstrain.encoding``).

::

    python -m bidstrain.encoding --settings results/plan/<experiment>/encoding.json \\
        --inputs results/plan/<experiment>/encoding-inputs.json --world-size 1 \\
        --out-dir results/encoding/<experiment>

``--settings``: JSON ``{"encoding": {...the encoding section...}, "seed": train.seed}``.
``--data``: the arrays (:mod:`bidstrain.encoding.data`), or ``--inputs``: the averages'
BOLD and aligned stimulus stores (:mod:`bidstrain.encoding.stores`). Writes, in ``--out-dir``:
``model.pt``, ``model.json``, ``metrics.json``, ``metrics.tsv``, ``heldout.npz``, and
checkpoints under ``checkpoints/``.

Exit status: 0 when done, 1 on bad input, 75 after SIGTERM/SIGUSR1 (or the test hook
``BIDSTRAIN_TEST_STOP_AT_STEP``) once the checkpoint is written: rerun to resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bidstrain.config import EncodingJobConfig, to_plain
from bidstrain.encoding.data import load_data
from bidstrain.encoding.evaluate import (
    FDR,
    mean_prediction,
    ridge_baseline,
    score,
    shift_null,
)
from bidstrain.encoding.fit import Interrupted, fit
from bidstrain.encoding.outputs import (
    model_description,
    write_metrics,
    write_model,
    write_predictions,
)
from bidstrain.encoding.stores import data_from_stores, read_inputs
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.io.atomic import write_text_atomic
from bidstrain.train.distributed import init, shutdown
from bidstrain.train.stop import EXIT_INTERRUPTED, TestStops

LOG = logging.getLogger("bidstrain.encoding")


def run(
    settings_path: str | Path,
    data_path: str | Path | None,
    out_dir: str | Path,
    world_size: int,
    stop_after: int | None = None,
    inputs_path: str | Path | None = None,
) -> dict:
    """Train, validate and write the outputs (rank 0).

    Parameters
    ----------
    settings_path : str or Path
        The job's settings file (:class:`bidstrain.config.EncodingJobConfig`).
    data_path : str or Path, optional
        The arrays as one ``.npz`` (:func:`~bidstrain.encoding.data.save_data`); None to
        read them from the stores of ``inputs_path``.
    out_dir : str or Path
        Where ``model.pt``, ``model.json``, the metrics and the checkpoints go.
    world_size : int
        The ranks the workflow planned; another number started is an error.
    stop_after : int, optional
        Stop after this optimizer step as if SIGTERM had arrived, once its checkpoint is
        written (:class:`~bidstrain.encoding.fit.Interrupted`); tests interrupt a run
        this way.
    inputs_path : str or Path, optional
        The JSON of the aligned and BOLD stores (:func:`~bidstrain.encoding.stores.
        read_inputs`).

    Returns
    -------
    dict
        The metrics summary.
    """
    job = EncodingJobConfig.read(settings_path)
    config, seed = job.encoding, job.seed
    if data_path is not None:
        data = load_data(data_path)
    else:
        data = data_from_stores(read_inputs(inputs_path), config.kinds, config.target)
    context = init()
    if context.world_size != world_size:
        raise BidstrainError(
            f"the workflow planned {world_size} rank(s) but {context.world_size} started"
        )
    out = Path(out_dir)
    try:
        ridge = ridge_baseline(data.train_x, data.train_y, data.heldout_x, config.ridge_alphas)
        alpha = ridge.alpha if config.alpha is None else config.alpha
        fitted = fit(
            data,
            config,
            alpha=alpha,
            seed=seed,
            context=context,
            checkpoint_dir=out / "checkpoints",
            stop_after=stop_after,
        )
    finally:
        shutdown(context)
    predicted = fitted.predict(data.heldout_x)
    baseline = mean_prediction(data.train_y, data.heldout_y.shape[0])
    scores = {
        "model": score(predicted, data.heldout_y),
        "ridge": score(ridge.predicted, data.heldout_y),
        "mean": score(baseline, data.heldout_y),
    }
    nulls = {
        "model": shift_null(predicted, data.heldout_y),
        "ridge": shift_null(ridge.predicted, data.heldout_y),
    }
    extra = {
        "alpha": alpha,
        "ridge_alpha": ridge.alpha,
        "heldout_time_points": int(data.heldout_y.shape[0]),
        "training_time_points": int(data.train_y.shape[0]),
        "chance": {
            "method": "circular shift: each target's r against its r with the measured "
            "series rotated by every nonzero shift (one-sided)",
            "rotations": int(data.heldout_y.shape[0]) - 1,
            "smallest_p": 1.0 / data.heldout_y.shape[0],
            "false_discovery_rate": FDR,
        },
        "mean_correlation_reported_as": "null: a constant prediction has no correlation",
    }
    if context.is_main:
        settings = {"encoding": to_plain(config), "seed": seed}
        description = model_description(fitted, data.features, data.target, settings)
        write_model(out / "model.pt", fitted, description)
        write_text_atomic(out / "model.json", json.dumps(description, indent=2) + "\n")
        write_metrics(
            out / "metrics.json",
            out / "metrics.tsv",
            scores,
            nulls,
            extra,
            data.target,
        )
        write_predictions(
            out / "heldout.npz", data.heldout_y, model=predicted, ridge=ridge.predicted
        )
    return {name: s.summary() for name, s in scores.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and run the job."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.encoding", description=__doc__)
    parser.add_argument("--settings", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="the arrays (.npz, bidstrain.encoding.data)")
    source.add_argument("--inputs", help="JSON: the averages' BOLD and aligned stores")
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        run(
            args.settings,
            args.data,
            args.out_dir,
            args.world_size,
            TestStops.from_environ().stop_at,
            args.inputs,
        )
    except Interrupted as interrupted:
        LOG.warning("%s", interrupted)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    run_cli(main)
