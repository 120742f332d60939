"""``bidstrain``: the workflow of this clone run in a study folder.

::

    bidstrain init STUDY --bids-dir DATASET [--experiment NAME] [--configfile FILE ...]
    bidstrain [-C STUDY] run [--slurm] [TARGET ...] [SNAKEMAKE OPTION ...]
    bidstrain [-C STUDY] dry-run [TARGET ...] [SNAKEMAKE OPTION ...]
    bidstrain [-C STUDY] validate [SNAKEMAKE OPTION ...]
    bidstrain [-C STUDY] report [--out HTML] [SNAKEMAKE OPTION ...]
    bidstrain [-C STUDY] status [--follow]

The study folder (``-C``, by default the current directory) is Snakemake's working
directory: its ``config/config.yaml`` (then any ``--configfile``, relative to the study
folder) is the configuration; ``results/``, ``logs/`` and ``.snakemake/`` are written
there. Snakemake runs with this clone's Snakefile and its ``profiles/default`` (and
``profiles/slurm`` with ``--slurm``); where no SLURM controller answers, a run that does
not use SLURM gets ``SLURM_CONF=/dev/null`` (:mod:`bidstrain.cli.slurm`). See
docs/study-folder.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from bidstrain.cli import status, why
from bidstrain.cli.slurm import run_environment
from bidstrain.config import Config, validate_config
from bidstrain.config.study import STUDY_CONFIG, misplaced_paths, no_configuration
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import atomic_path

#: The clone: ``<clone>/workflow/bidstrain/cli/main.py``.
CLONE = Path(__file__).resolve().parents[3]
SNAKEFILE = CLONE / "workflow" / "Snakefile"
PROFILES = CLONE / "profiles"
REPORT = "results/report.html"

CONFIG_HEADER = """\
# Configuration of this study. Set here only what differs from the defaults; relative
# paths are relative to this study folder. Every key, its meaning and its default:
# {schema}
"""
#: Said in a configuration started from files (``bidstrain init --configfile``).
STARTED_FROM = """\
# Started from the keys of these files (`bidstrain init --configfile`; their comments
# are there), then --bids-dir and any --experiment of the command line over them:
{files}"""
HELDOUT_HINT = """\
# Validation: without held-out data, whether the model learned is not measured. Hold
# out a BOLD run of every subject (normalized with the statistics of its other runs),
#   normalize: {heldout: {run: ["2"]}}
# and T1w and DWI of a session or subject, under train (train.heldout: {ses: ["2"]}).
"""
EXPERIMENT_NOTE = """\
# train.experiment names results/train/<experiment> and results/checks/<experiment>: one
# folder per experiment; another (another --configfile setting it) keeps its own.
"""


def snakemake_command(
    arguments: Sequence[str], *, slurm: bool = False, python: str = sys.executable
) -> list[str]:
    """The ``snakemake`` command of a run in the study folder (its working directory).

    Parameters
    ----------
    arguments : sequence of str
        Targets and Snakemake options, appended as given.
    slurm : bool
        Submit the jobs to SLURM (``profiles/slurm``).
    python : str
        The interpreter that runs Snakemake (its jobs use it too).
    """
    command = [python, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]
    command += ["--workflow-profile", str(PROFILES / "default")]
    if slurm:
        command += ["--profile", str(PROFILES / "slurm")]
    return command + list(arguments)


def init_study(
    study: Path,
    bids_dir: str,
    experiment: str | None = None,
    settings: Sequence[str | Path] = (),
) -> tuple[Path, Config]:
    """Write ``study/config/config.yaml`` for a dataset; refuse to overwrite one.

    Parameters
    ----------
    study : Path
        The study folder (made when missing).
    bids_dir : str
        The dataset; a relative path is taken from the current directory, as a shell
        user means it, and written absolute.
    experiment : str, optional
        ``train.experiment``; by default that of ``settings``, else ``main``.
    settings : sequence of str or Path
        Configuration files the study starts from, merged key by key in order, each over
        the one before, as Snakemake merges ``--configfile`` files; ``bids_dir`` and
        ``experiment`` go over them. Relative paths inside them keep meaning paths in the
        study folder.

    Returns
    -------
    Path
        The configuration file.
    Config
        What it holds, typed.

    Raises
    ------
    BidstrainError
        When the folder has a configuration already, the dataset folder does not exist,
        a settings file cannot be read or is not a mapping, or the configuration is not
        one the schema accepts (the files are named).
    """
    config = study / STUDY_CONFIG
    if config.exists():
        raise BidstrainError("the study folder has a configuration already", path=config)
    dataset = Path(bids_dir).expanduser().resolve()
    if not dataset.is_dir():
        raise BidstrainError("--bids-dir: no such dataset folder", path=dataset)
    # (Snakemake's merge of --configfile files: 60 ms of imports no other command needs)
    from snakemake.utils import update_config

    values: dict[str, Any] = {}
    for path in settings:
        update_config(values, _settings_file(Path(path)))
    values["bids_dir"] = str(dataset)
    typed = _typed(values, settings)  # the files' own keys, before --experiment goes over them
    if experiment is not None:
        update_config(values, {"train": {"experiment": experiment}})
        typed = _typed(values, settings)
    config.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(config) as tmp:
        tmp.write_text(_config_text(values, typed, settings))
    return config, typed


def _config_text(values: dict[str, Any], typed: Config, settings: Sequence[str | Path]) -> str:
    """A study's configuration holding ``values`` (``typed``: the same, validated), with
    ``train.experiment`` first in its section, and comments: where the keys are
    documented, the files it started from, how to hold out data when it holds out
    nothing, and what ``train.experiment`` names."""
    schema = CLONE / "workflow" / "schemas" / "config.schema.yaml"
    parts = [CONFIG_HEADER.format(schema=schema)]
    if settings:
        files = "".join(f"#   {Path(path).resolve()}\n" for path in settings)
        parts.append(STARTED_FROM.format(files=files))
    # (JSON strings are YAML strings: a path with ": " or "#" stays one value)
    parts.append(f"bids_dir: {json.dumps(values['bids_dir'])}\n\n")
    if not (typed.normalize.heldout or typed.train.loader.heldout):
        parts.append(HELDOUT_HINT + "\n")
    rest = {key: value for key, value in values.items() if key not in ("bids_dir", "train")}
    train = {"experiment": typed.train.run.experiment}
    train.update((key, value) for key, value in values.get("train", {}).items())
    parts += [_yaml(rest) + "\n" if rest else "", EXPERIMENT_NOTE, _yaml({"train": train})]
    return "".join(parts)


class _ListsInline(yaml.SafeDumper):
    """Mappings in blocks, lists on one line (``delays: [1, 2, 3, 4]``)."""


_ListsInline.add_representer(
    list, lambda dumper, items: dumper.represent_sequence("tag:yaml.org,2002:seq", items, True)
)


def _yaml(values: dict[str, Any]) -> str:
    return yaml.dump(values, Dumper=_ListsInline, sort_keys=False, default_flow_style=False)


def _typed(values: dict[str, Any], settings: Sequence[str | Path]) -> Config:
    """``values`` validated and typed; the error of values the schema refuses names the
    settings files."""
    try:
        return Config.from_dict(validate_config(copy.deepcopy(values)))
    except BidstrainError as error:
        files = ", ".join(str(path) for path in settings)
        raise BidstrainError(f"{error}{f' (with the keys of {files})' if files else ''}") from None


def _settings_file(path: Path) -> dict[str, Any]:
    """The mapping a settings file of ``init --configfile`` holds."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise BidstrainError(f"--configfile: cannot read it ({error})", path=path) from None
    if content is None:  # an empty file
        return {}
    if not isinstance(content, dict):
        found = type(content).__name__
        raise BidstrainError(f"--configfile: not a mapping of keys (a {found})", path=path)
    return content


def configfiles(arguments: Sequence[str]) -> list[str]:
    """The files of ``--configfile``/``--configfiles`` in Snakemake's arguments (each takes
    every following word up to the next option; ``--configfile=FILE`` the one file)."""
    files, taking = [], False
    for word in arguments:
        if word.startswith("-"):
            option, equals, value = word.partition("=")
            named = option in ("--configfile", "--configfiles")
            if named and equals:  # the one value after "="
                files.append(value)
            taking = named and not equals
        elif taking:
            files.append(word)
    return files


def run_to_end(
    command: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None,
    on_output: Callable[[str], None] | None = None,
) -> int:
    """Run ``command`` and wait for it to end, whatever signal this process gets.

    The command runs in a session of its own, so that a Ctrl-C in the terminal reaches
    it once, from here: on SIGINT (``KeyboardInterrupt``) or SIGTERM this process passes
    the signal on to the command's process group and waits. Snakemake's local jobs are
    in that group and get it as they would from a terminal (Snakemake itself waits for
    its running local jobs to end, and a training job could run for hours), while
    Snakemake stops, removes its lock and ends its log (killed at once, as
    ``subprocess.run`` does 0.25 s after a Ctrl-C, it leaves the lock behind and the
    next run refuses to start).

    Parameters
    ----------
    command : sequence of str
    cwd : Path
    env : dict, optional
        The command's environment (None: this process's).
    on_output : callable, optional
        Given each line of the command's standard output, which is then read through a
        pipe and written on to this process's standard output as it comes.

    Returns
    -------
    int
        The command's exit status.
    """
    stdout = subprocess.PIPE if on_output else None
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=stdout,
        encoding="utf-8",
        errors="replace",  # a path in another encoding is passed on, not a traceback
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: _signal_group(process, signal.SIGTERM))
    try:
        while True:
            try:
                for line in process.stdout if on_output else ():
                    sys.stdout.write(line)
                    on_output(line)
                return process.wait()
            except KeyboardInterrupt:
                _signal_group(process, signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group that ``process`` leads (its session's)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # the group has ended
        pass


def _snakemake(
    study: Path,
    arguments: Sequence[str],
    *,
    slurm: bool = False,
    on_output: Callable[[str], None] | None = None,
) -> int:
    if not study.is_dir():
        raise BidstrainError("the study folder does not exist", path=study)
    given = configfiles(arguments)
    if not given and not (study / STUDY_CONFIG).is_file():
        raise BidstrainError(no_configuration(study).removeprefix("bidstrain: "))
    for name in given:
        if not (study / name).is_file():
            raise BidstrainError(
                "no such configuration file (a relative --configfile is read from the "
                "study folder)",
                path=study / name,
            )
    env = run_environment(os.environ, uses_slurm=slurm)
    command = snakemake_command(arguments, slurm=slurm)
    return run_to_end(command, cwd=study, env=env, on_output=on_output)


#: What the help of a command that runs Snakemake says of the other arguments.
PASSED_ON = (
    "Every other argument goes to Snakemake as it stands: {}--cores N, --configfile FILE, "
    "--config KEY=VALUE, --forcerun RULE; see `snakemake --help`."
)
#: The targets, in that help, of a command that takes them.
TARGETS = "targets (default all; for example normalize, checks, train), "


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run its command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="bidstrain",
        description="The bidstrain workflow run in a study folder (docs/study-folder.md).",
        allow_abbrev=False,
    )
    study_help = "the study folder (default: the current directory)"
    parser.add_argument("-C", "--study", type=Path, default=Path.cwd(), help=study_help)
    # -C after the command too (``bidstrain dry-run -C STUDY``), not passed to Snakemake
    # (whose -C is --config)
    study_option = argparse.ArgumentParser(add_help=False)
    study_option.add_argument(
        "-C", "--study", type=Path, default=argparse.SUPPRESS, help=study_help
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # (no abbreviations: any option a command does not know is Snakemake's)
    command = functools.partial(commands.add_parser, allow_abbrev=False, parents=[study_option])
    init = commands.add_parser("init", help="make a study folder with its config/config.yaml")
    init.add_argument("folder", type=Path)
    init.add_argument(
        "--bids-dir", required=True, help="the dataset (relative: to the current directory)"
    )
    init.add_argument(
        "--experiment", help="train.experiment (default: that of --configfile, else main)"
    )
    init.add_argument(
        "--configfile",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="start from the keys of these configuration files (later over earlier, key by "
        "key; relative: to the current directory), --bids-dir and --experiment over them",
    )
    with_targets = PASSED_ON.format(TARGETS)
    run = command("run", help="build targets (default: all)", epilog=with_targets)
    run.add_argument("--slurm", action="store_true", help="submit the jobs to SLURM")
    command("dry-run", help="show what `run` would do", epilog=with_targets)
    command(
        "validate",
        help="check every image header and sidecar of the plan",
        epilog=PASSED_ON.format(""),
    )
    report = command(
        "report", help="run the workflow, then write its HTML report", epilog=with_targets
    )
    report.add_argument("--out", default=REPORT, help=f"the report (default {REPORT})")
    show = command("status", help="each running job and its log's last line")
    show.add_argument("--follow", "-f", action="store_true", help="repeat until the run ends")
    show.add_argument("--interval", type=float, default=5.0, help="seconds between looks")
    args, rest = parser.parse_known_args(argv)
    study = args.study.resolve()
    if args.command == "init":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        config, typed = init_study(args.folder, args.bids_dir, args.experiment, args.configfile)
        for warning in misplaced_paths(args.folder, typed):
            print(f"bidstrain: warning: {warning}", file=sys.stderr)
        print(f"wrote {config}; next: bidstrain -C {shlex.quote(str(args.folder))} validate")
        return 0
    if args.command == "status":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.follow:
            status.follow(study, args.interval)
        else:
            print(status.describe(study), end="")
        return 0
    if args.command == "run":
        return _snakemake(study, rest, slurm=args.slurm)
    if args.command == "dry-run":
        reasons = why.RerunReasons()
        code = _snakemake(study, ["--dry-run", *rest], on_output=reasons.add)
        for line in reasons.explain(study):
            print(line)
        return code
    if args.command == "validate":
        started = time.time()
        code = _snakemake(study, ["validate", *rest])
        report = study / "results" / "validate" / "problems.txt"
        # a run that stopped before the job (a bad config) leaves an older file: not shown
        current = code == 0 or (report.exists() and report.stat().st_mtime >= started - 1.0)
        if report.exists() and current:
            print(report.read_text(), end="")
        return code
    # report: the run first (every stage's figures), so the HTML is never older than them
    return _snakemake(study, rest) or _snakemake(study, ["--report", args.out, *rest])


def entry_point() -> None:
    """The ``bidstrain`` console script: :func:`main`, with bad input as one line on
    stderr (``bidstrain: error: ...``, exit status 1) instead of a traceback."""
    try:
        code = main()
    except BidstrainError as error:
        print(f"bidstrain: error: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)
