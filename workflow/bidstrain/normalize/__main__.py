"""Command line: normalize one image (a job of the ``normalize_*`` rules)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from bidstrain.errors import run_cli
from bidstrain.normalize.bold import normalize_bold
from bidstrain.normalize.heldout import normalize_with_stats
from bidstrain.normalize.image import DEFAULT_MASKS, MASK_KEYS, ImageInfo, Options
from bidstrain.normalize.volumes import normalize_volumes
from bidstrain.store import StoreMeta

log = logging.getLogger("bidstrain.normalize")


def main(argv: Sequence[str] | None = None) -> None:
    """Normalize the image given on the command line into its store."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.normalize")
    parser.add_argument("modality", choices=sorted(MASK_KEYS))
    parser.add_argument("--image", required=True, help="the NIfTI image")
    parser.add_argument("--ingest", required=True, help="the subject's ingest JSON")
    parser.add_argument("--out", required=True, help="the store to write (*.zarr)")
    parser.add_argument("--mask", default=None, help="epi, head, none, or a mask image")
    parser.add_argument("--ddof", type=int, default=Options.ddof)
    parser.add_argument("--nonfinite", choices=["error", "mask"], default=Options.nonfinite)
    parser.add_argument("--block-volumes", type=int, default=Options.block_volumes)
    parser.add_argument(
        "--stats-from", nargs="*", default=[], help="BOLD stores to take the statistics from"
    )
    args = parser.parse_args(argv)
    options = Options(
        mask=args.mask or DEFAULT_MASKS[args.modality],
        ddof=args.ddof,
        nonfinite=args.nonfinite,
        block_volumes=args.block_volumes,
    )
    info = ImageInfo.from_ingest(args.ingest, args.image)
    started = time.perf_counter()
    if args.stats_from:
        attrs = normalize_with_stats(args.image, args.stats_from, args.out, info, options)
    elif args.modality == "bold":
        attrs = normalize_bold(args.image, args.out, info, options)
    else:
        attrs = normalize_volumes(args.image, args.out, info, options)
    meta = StoreMeta.from_attrs(attrs, args.out)
    log.info(
        "%s -> %s in %.1f s: %d zero-variance, %d non-finite, statistics from %s",
        args.image,
        args.out,
        time.perf_counter() - started,
        meta.n_zero_variance,
        meta.n_nonfinite,
        ", ".join(meta.stats_from),
    )


if __name__ == "__main__":
    run_cli(main)
