"""``python -m bidstrain.average``: the cross-subject average of one (task, run), and its
parcel average with ``--parcels`` (:mod:`bidstrain.average.cohort`, :mod:`.parcels`)."""

import argparse
import json
from collections.abc import Sequence

from bidstrain.average.cohort import __doc__ as cohort_doc
from bidstrain.average.cohort import average_stores
from bidstrain.average.parcels import average_parcel_stores
from bidstrain.config import AverageConfig, load_section
from bidstrain.errors import run_cli


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m bidstrain.average --settings '{"mask": ...}' --out
    OUT.zarr STORE [STORE ...]`` (``@FILE`` reads arguments from FILE, one a line);
    ``--settings`` is the config's ``average`` section as JSON (keys left out take their
    schema defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m bidstrain.average",
        description=cohort_doc.splitlines()[0],
        fromfile_prefix_chars="@",
    )
    parser.add_argument("stores", nargs="+", help="subject stores of one (task, run)")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--parcels", nargs="*", default=[], help="parcel stores of the same runs (parcellation)"
    )
    parser.add_argument("--parcels-out", help="the average parcel store (with --parcels)")
    parser.add_argument(
        "--settings", type=json.loads, required=True, help="the average section, as JSON"
    )
    args = parser.parse_args(argv)
    settings: AverageConfig = load_section("average", args.settings)
    average_stores(
        args.stores,
        args.out,
        mask=settings.mask,
        truncate=settings.truncate,
        min_subjects=settings.min_subjects,
        affine_tolerance=settings.affine_tolerance,
        tr_tolerance=settings.repetition_time_tolerance,
    )
    if args.parcels:
        average_parcel_stores(
            args.parcels,
            args.parcels_out,
            voxel_stores=args.stores,
            truncate=settings.truncate,
            min_subjects=settings.min_subjects,
            tr_tolerance=settings.repetition_time_tolerance,
        )


if __name__ == "__main__":
    run_cli(main)
