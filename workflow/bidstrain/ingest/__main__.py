"""Command line: ``python -m bidstrain.ingest manifest ...`` joins the subjects' records
and tables into the manifest (:func:`bidstrain.ingest.records.write_manifest`);
``python -m bidstrain.ingest validate ...`` checks every image of the plan and reports
every problem (:func:`bidstrain.ingest.validate.validate`), with the config's ``ingest``
section as JSON (``--settings``, typed again with :func:`bidstrain.config.load_section`,
keys left out at their schema defaults) and, with ``--atlas``, the parcellation's files
(JSON) to read onto every BOLD run. ``@FILE`` reads arguments from FILE, one a line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from bidstrain.config import IngestConfig, load_section
from bidstrain.dataset.atlas import AtlasFiles
from bidstrain.errors import run_cli
from bidstrain.ingest.records import write_manifest
from bidstrain.ingest.validate import validate


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run its command."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.ingest", fromfile_prefix_chars="@")
    commands = parser.add_subparsers(dest="command", required=True)
    manifest = commands.add_parser(
        "manifest", help="join the subjects' ingest records and normalize tables into a TSV"
    )
    manifest.add_argument("--records", nargs="+", required=True)
    manifest.add_argument("--tables", nargs="+", required=True)
    manifest.add_argument("--out", required=True)
    checks = commands.add_parser(
        "validate", help="check every image's header and sidecars; report every problem"
    )
    checks.add_argument("--images", nargs="+", required=True)
    checks.add_argument("--bids-dir", required=True)
    checks.add_argument(
        "--settings", type=json.loads, required=True, help="the ingest section, as JSON"
    )
    checks.add_argument(
        "--atlas", type=json.loads, help="the parcellation's files, as JSON (AtlasFiles)"
    )
    checks.add_argument("--out-tsv", required=True)
    checks.add_argument("--out-text", required=True)
    args = parser.parse_args(argv)
    if args.command == "manifest":
        write_manifest(args.records, args.tables, args.out)
    else:
        settings: IngestConfig = load_section("ingest", args.settings)
        validate(
            args.bids_dir,
            args.images,
            tsv=args.out_tsv,
            text=args.out_text,
            tr_mismatch=settings.repetition_time_mismatch,
            tr_tolerance=settings.repetition_time_tolerance,
            atlas=AtlasFiles.from_json(args.atlas) if args.atlas else None,
        )


if __name__ == "__main__":
    run_cli(main)
