"""Command line: ``python -m bidstrain.report <figure> ...``, one subcommand per stage.

::

    coverage  --manifest results/ingest/manifest.tsv --out coverage.png
    normalize --tables <scans.tsv> ... --out-dir DIR --settings '{"sample_voxels": N}'
    average   --store <average.zarr> --subject-stores <store.zarr> ... --title T --out <png>
    checks    --summary results/checks/<experiment>/summary.json --scale-table-out <png>
              --summary-out <png>
    model_input --model-json model.json [--stimuli <aligned.zarr> ...] --experiment NAME
              --out <png>
    train     --metrics metrics.jsonl --experiment NAME
              --settings results/plan/<experiment>/train.json --out-dir DIR
    embed     --table embeddings.tsv --metrics metrics.jsonl --experiment NAME --out <png>
    stimuli   --bold <average.zarr> --aligned <aligned.zarr> ... --title T --out <png>

No option holds a configuration value: ``normalize --settings`` is the config's ``report``
section as JSON (typed again with :func:`bidstrain.config.load_section`, keys left out at
their schema defaults), and ``train --settings`` the experiment's train settings file, the
one its training job read (for ``train.clip_grad_norm`` and ``train.loss.weights``).
    encoding  --encoding-dir results/encoding/<experiment> --bold <average.zarr> --targets N
              --timecourse-out <png> --map-out <png> [--atlas NAME IMAGE LABELS SPACE]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from bidstrain.config import ReportConfig, load_section
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.report import TRAINING_FIGURES

log = logging.getLogger("bidstrain.report")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bidstrain.report", fromfile_prefix_chars="@")
    figures = parser.add_subparsers(dest="figure", required=True)
    coverage = figures.add_parser("coverage", help="subjects x acquisitions of the manifest")
    coverage.add_argument("--manifest", required=True)
    coverage.add_argument("--out", required=True)
    normalize = figures.add_parser(
        "normalize", help="one figure per store of some subjects' normalize tables"
    )
    normalize.add_argument("--tables", nargs="+", required=True)
    normalize.add_argument(
        "--settings", type=json.loads, required=True, help="the report section, as JSON"
    )
    normalize.add_argument("--out-dir", required=True)
    average = figures.add_parser("average", help="group maps and subject agreement")
    average.add_argument("--store", required=True)
    average.add_argument("--subject-stores", nargs="+", required=True)
    average.add_argument("--title", required=True)
    average.add_argument("--out", required=True)
    checks = figures.add_parser("checks", help="scale table and checks summary")
    checks.add_argument("--summary", required=True)
    checks.add_argument("--scale-table-out", required=True)
    checks.add_argument("--summary-out", required=True)
    model_input = figures.add_parser("model_input", help="volumes as the trained model sees them")
    model_input.add_argument("--model-json", required=True)
    model_input.add_argument(
        "--stimuli", nargs="+", default=[], help="aligned stores beside the first BOLD window"
    )
    model_input.add_argument("--experiment", required=True)
    model_input.add_argument("--out", required=True)
    train = figures.add_parser("train", help="training curves from metrics.jsonl")
    train.add_argument("--metrics", required=True)
    train.add_argument("--experiment", required=True)
    train.add_argument(
        "--settings", required=True, help="JSON file: the experiment's train section"
    )
    train.add_argument("--out-dir", required=True)
    embed = figures.add_parser("embed", help="embeddings and reconstruction losses")
    embed.add_argument("--table", required=True)
    embed.add_argument("--metrics", required=True)
    embed.add_argument("--experiment", required=True)
    embed.add_argument("--out", required=True)
    stimuli = figures.add_parser("stimuli", help="stimulus features beside the averaged BOLD")
    stimuli.add_argument("--bold", required=True)
    stimuli.add_argument("--aligned", nargs="+", required=True)
    stimuli.add_argument("--title", required=True)
    stimuli.add_argument("--out", required=True)
    encoding = figures.add_parser("encoding", help="held-out prediction and correlation map")
    encoding.add_argument("--encoding-dir", required=True)
    encoding.add_argument("--bold", required=True, help="an average store: the mask")
    encoding.add_argument("--targets", type=int, required=True)
    encoding.add_argument("--timecourse-out", required=True)
    encoding.add_argument("--map-out", required=True)
    encoding.add_argument(
        "--atlas",
        nargs=4,
        metavar=("NAME", "IMAGE", "LABELS", "SPACE"),
        help="the parcellation of a model of parcels: its parcels painted on --bold's grid",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Draw the figures of one subcommand and write them as PNG files."""
    args = _parser().parse_args(argv)
    # Figure modules import matplotlib (and train imports torch): only the one needed.
    from bidstrain.report.figure import save_figure

    if args.figure == "coverage":
        import pandas as pd

        from bidstrain.ingest.records import MANIFEST_COLUMNS, read_manifest
        from bidstrain.report.ingest import coverage_figure

        manifest = pd.DataFrame(read_manifest(args.manifest), columns=list(MANIFEST_COLUMNS))
        outputs = [(args.out, coverage_figure(manifest))]
    elif args.figure == "normalize":
        from bidstrain.report.normalize import normalization_figures

        settings: ReportConfig = load_section("report", args.settings)
        outputs = normalization_figures(args.tables, args.out_dir, n_sample=settings.sample_voxels)
    elif args.figure == "average":
        from bidstrain.io.store import open_store
        from bidstrain.report.average import average_figure

        subjects = [open_store(path) for path in args.subject_stores]
        outputs = [(args.out, average_figure(open_store(args.store), subjects, args.title))]
    elif args.figure == "stimuli":
        from bidstrain.io.store import open_store, read_aligned_store
        from bidstrain.report.stimuli import stimulus_figure

        aligned = {store.kind: store for store in map(read_aligned_store, args.aligned)}
        figure = stimulus_figure(aligned, open_store(args.bold), args.title)
        outputs = [(args.out, figure)]
    elif args.figure == "model_input":
        from bidstrain.io.store import read_aligned_store
        from bidstrain.report.model_input import model_input_figure

        description = json.loads(Path(args.model_json).read_text())
        stimuli = [read_aligned_store(path) for path in args.stimuli]
        outputs = [(args.out, model_input_figure(description, args.experiment, stimuli))]
    elif args.figure == "checks":
        from bidstrain.report.checks import (
            read_summary,
            scale_figure,
            scale_values,
            summary_figure,
        )

        summary = read_summary(args.summary)
        outputs = [
            (args.scale_table_out, scale_figure(scale_values(summary, args.summary))),
            (args.summary_out, summary_figure(summary)),
        ]
    elif args.figure == "embed":
        from bidstrain.report.embed import embedding_figure, read_embeddings
        from bidstrain.report.train import read_metrics

        _, stores = read_embeddings(args.table)
        records = read_metrics(args.metrics)
        summary = next((r for r in reversed(records) if r.get("kind") == "summary"), None)
        outputs = [(args.out, embedding_figure(stores, summary, args.experiment))]
    elif args.figure == "encoding":
        outputs = _encoding_figures(args)
    else:
        from bidstrain.config import read_train_settings
        from bidstrain.report.train import read_metrics, training_figures

        train_settings = read_train_settings(args.settings)
        figures = training_figures(
            read_metrics(args.metrics),
            experiment=args.experiment,
            clip_grad_norm=train_settings.optimizer.clip_grad_norm,
            loss_weights=train_settings.loss.weights,
        )
        outputs = [(Path(args.out_dir) / f"{name}.png", figures[name]) for name in TRAINING_FIGURES]
    # (path, figure) pairs; the normalization figures are drawn one at a time, as saved
    for path, fig in outputs:
        save_figure(fig, path)
        log.info("wrote %s", path)


def _encoding_figures(args: argparse.Namespace) -> list:
    import json

    import numpy as np

    from bidstrain.encoding.evaluate import above_chance
    from bidstrain.io.store import open_store, to_grid
    from bidstrain.report.encoding import (
        chance_line,
        correlation_map_figure,
        parcel_values,
        read_table,
        timecourse_figure,
    )

    folder = Path(args.encoding_dir)
    model = json.loads((folder / "model.json").read_text())
    target = model["target"]
    kind = "parcel" if target.get("kind") == "parcels" else "voxel"
    metrics = json.loads((folder / "metrics.json").read_text())
    if "chance" not in metrics:  # an encoding job of an earlier bidstrain
        raise BidstrainError(
            "holds no circular-shift test of chance (written by an earlier bidstrain): "
            "rerun the encoding model (snakemake encoding_model --forcerun encoding_model)",
            path=folder / "metrics.json",
        )
    table = read_table(folder / "metrics.tsv")
    correlation = table["model_correlation"]
    chance = chance_line(metrics, kind)
    if kind == "parcel":  # the atlas's labels and names, as metrics.tsv lists them
        labels = zip(target["parcels"], target["parcel_names"], strict=True)
        names = [f"parcel {label} {name}" for label, name in labels]
    else:
        names = [f"voxel {i}" for i in range(correlation.size)]
    with np.load(folder / "heldout.npz") as held:
        timecourse = timecourse_figure(
            held["measured"],
            held["model"],
            held["ridge"],
            correlation,
            table["model_p"],
            n=args.targets,
            repetition_time=model["features"]["repetition_time"],
            names=names,
            chance=chance,
        )
    store = open_store(args.bold, use_dask=False)
    mask = np.asarray(store["mask"].values, bool)
    voxels, above = correlation, above_chance(table["model_p"])
    if kind == "parcel":
        from bidstrain.dataset.atlas import AtlasFiles, load_atlas
        from bidstrain.io.store import store_meta

        if args.atlas is None:
            raise BidstrainError("a model of parcels needs --atlas to draw its map")
        name, image, labels, space = args.atlas
        atlas = load_atlas(
            AtlasFiles(name, Path(image), Path(labels), space),
            mask.shape,
            store_meta(store).affine,
            image=args.bold,
        )
        voxels = parcel_values(correlation, target["parcels"], atlas)[mask]
        above = parcel_values(above.astype(float), target["parcels"], atlas)[mask] == 1.0
    kinds = ", ".join(model["features"]["kinds"])
    title = f"Encoding model: held-out correlation per {kind} ({kinds}) over the mean image"
    title += "\n" + chance
    anatomy = to_grid(store, np.asarray(store["mean"].values, np.float64))
    return [
        (args.timecourse_out, timecourse),
        (args.map_out, correlation_map_figure(voxels, mask, title, anatomy, above)),
    ]


if __name__ == "__main__":
    run_cli(main)
