"""The `bidstrain` command: when it (and the Makefile) turns the SLURM client off, what
`bidstrain status` shows of a real run, and `bidstrain init`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from bidstrain import paths
from bidstrain.cli import main as cli
from bidstrain.cli import status, why
from bidstrain.cli.slurm import NO_SLURM_CONF, controller_answers, run_environment
from bidstrain.errors import BidstrainError
from conftest import REPO, snakemake_env

#: Fake ``scontrol`` programs: a controller up, one down, one that does not answer.
SCONTROLS = {
    "up": 'echo "Slurmctld(primary) at ctl is UP"',
    "down": 'echo "Slurmctld(primary) at ctl is DOWN"; exit 1',
    "hangs": "sleep 30",
}


def fake_path(tmp_path, behaviour: str | None) -> dict[str, str]:
    """An environment whose PATH has only a fake ``scontrol`` and the system's tools, or
    (for None) no ``scontrol`` at all."""
    folder = tmp_path / f"bin-{behaviour}"
    folder.mkdir()
    if behaviour:
        scontrol = folder / "scontrol"
        scontrol.write_text(f"#!/bin/sh\n{SCONTROLS[behaviour]}\n")
        scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    # without a fake, the system's folders stay out too: they may hold a real scontrol
    return {**env, "PATH": f"{folder}:/usr/bin:/bin" if behaviour else str(folder)}


@pytest.mark.parametrize(
    ("behaviour", "answers", "slurm_conf"),
    [("up", True, None), ("down", False, NO_SLURM_CONF), ("hangs", False, NO_SLURM_CONF)],
)
def test_slurm_conf_is_set_only_where_no_controller_answers(
    tmp_path, behaviour, answers, slurm_conf
):
    env = fake_path(tmp_path, behaviour)
    start = time.monotonic()
    assert controller_answers(env=env) is answers
    assert time.monotonic() - start < 10  # a hanging scontrol is given up on
    assert run_environment(env, uses_slurm=False).get("SLURM_CONF") == slurm_conf
    # a SLURM run keeps the real configuration, and a given SLURM_CONF is kept
    assert "SLURM_CONF" not in run_environment(env, uses_slurm=True)
    given = {**env, "SLURM_CONF": "/etc/mine.conf"}
    assert run_environment(given, uses_slurm=False)["SLURM_CONF"] == "/etc/mine.conf"


def test_without_scontrol_nothing_is_set(tmp_path):
    env = fake_path(tmp_path, None)
    assert not controller_answers(env=env)
    assert "SLURM_CONF" not in run_environment(env, uses_slurm=False)


@pytest.mark.parametrize(("behaviour", "prefixed"), [("up", False), ("hangs", True)])
def test_make_runs_snakemake_with_slurm_conf_only_where_no_controller_answers(
    tmp_path, behaviour, prefixed
):
    """`make -n demo` prints the commands make would run: the snakemake ones carry
    SLURM_CONF=/dev/null exactly when the fake scontrol does not answer."""
    env = fake_path(tmp_path, behaviour)
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), "demo", "VENV=/nonexistent", "STAMP=/dev/null"],
        capture_output=True,
        text=True,
        env=env,
    )
    commands = [line for line in result.stdout.splitlines() if "bin/snakemake" in line]
    assert commands, result.stdout + result.stderr
    assert all(line.startswith("SLURM_CONF=/dev/null ") is prefixed for line in commands)


def test_configfiles_are_found_in_the_arguments():
    words = ["all", "--configfile", "a.yaml", "b.yaml", "-n", "--configfiles", "c.yaml"]
    assert cli.configfiles(words) == ["a.yaml", "b.yaml", "c.yaml"]
    assert cli.configfiles(["--configfile=d.yaml", "all", "--configfiles=e.yaml"]) == [
        "d.yaml",
        "e.yaml",
    ]


@pytest.mark.parametrize("command", ["run", "dry-run", "report", "validate"])
def test_the_help_of_a_snakemake_command_says_where_other_arguments_go(command, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.main([command, "--help"])
    assert exit_status.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Every other argument goes to Snakemake" in text and "--cores N" in text
    assert ("targets (default all" in text) == (command != "validate")


def test_the_study_may_follow_the_command(tmp_path):
    with pytest.raises(BidstrainError, match="study.*the study folder does not exist"):
        cli.main(["dry-run", "-C", str(tmp_path / "study")])
    with pytest.raises(BidstrainError, match="the study folder does not exist"):
        cli.main(["run", "--study", str(tmp_path / "study"), "all"])


#: A stand-in for Snakemake: says it is ready, notes each SIGINT it gets in a file, and
#: when the test lets it end (by a file) writes how many it got and exits with 3.
SIGNALLED_CHILD = """\
import pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
received = []

def note(*_):
    received.append("INT")
    (folder / f"signal-{len(received)}").touch()

signal.signal(signal.SIGINT, note)
(folder / "ready").touch()
while not (folder / "end").exists():
    time.sleep(0.01)
(folder / "received").write_text(" ".join(received))
sys.exit(3)
"""

PARENT = """\
import pathlib, sys
from bidstrain.cli.main import run_to_end
folder = pathlib.Path(sys.argv[1])
code = run_to_end([sys.executable, str(folder / "child.py"), str(folder)], cwd=folder, env=None)
(folder / "parent").write_text(str(code))
sys.exit(code)
"""


def _wait_for(path, process) -> None:
    deadline = time.monotonic() + 120  # a bound on a failure, not a timing
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.01)


def test_a_ctrl_c_is_passed_on_once_and_the_run_waited_for(tmp_path):
    """Snakemake killed at once (subprocess.run's way after a Ctrl-C) leaves its lock:
    the wrapper passes one SIGINT on and waits for the run's own end and status."""
    import signal

    (tmp_path / "child.py").write_text(SIGNALLED_CHILD)
    (tmp_path / "parent.py").write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    command = [sys.executable, str(tmp_path / "parent.py"), str(tmp_path)]
    parent = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "ready", parent)
    parent.send_signal(signal.SIGINT)  # a Ctrl-C reaches the wrapper alone
    _wait_for(tmp_path / "signal-1", parent)
    assert parent.poll() is None  # still waiting for the run
    (tmp_path / "end").touch()
    assert parent.wait(timeout=60) == 3
    assert (tmp_path / "received").read_text() == "INT"  # once, not twice
    assert (tmp_path / "parent").read_text() == "3"
    assert "Traceback" not in parent.stderr.read()


#: A workflow whose one job runs until a file appears, or a signal ends it.
WAITING_JOB = """\
rule waits:
    output: "done"
    shell: "touch started; while [ ! -e go ]; do sleep 0.1; done; touch {output}"
"""

SNAKEMAKE_PARENT = """\
import pathlib, sys
from bidstrain.cli.main import run_to_end
folder = pathlib.Path(sys.argv[1])
sys.exit(run_to_end([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=folder, env=None))
"""


@pytest.mark.integration
def test_a_ctrl_c_stops_the_running_local_job_as_from_a_terminal(tmp_path):
    """Snakemake waits for its running local jobs after a SIGINT: the wrapper's Ctrl-C
    must reach the job too (its process group's), or the run waits for the job's end."""
    import signal

    (tmp_path / "Snakefile").write_text(WAITING_JOB)
    (tmp_path / "parent.py").write_text(SNAKEMAKE_PARENT)
    env = {**snakemake_env(uses_slurm=False), "PYTHONPATH": str(REPO / "workflow")}
    command = [sys.executable, str(tmp_path / "parent.py"), str(tmp_path)]
    parent = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "started", parent)
        parent.send_signal(signal.SIGINT)  # a Ctrl-C reaches the wrapper alone
        # only a signal ends the job: without one the run would wait for "go"
        assert parent.wait(timeout=120) != 0
    finally:
        (tmp_path / "go").touch()  # a run that failed the test ends all the same
        parent.wait(timeout=120)
    assert not (tmp_path / "done").exists()
    assert not any((tmp_path / ".snakemake" / "locks").glob("*"))  # the next run starts


@pytest.mark.parametrize("command", ["run", "dry-run", "validate", "report"])
def test_a_study_without_configuration_is_told_how_to_make_one(command, tmp_path):
    """Before Snakemake starts, so the message is not wrapped in its WorkflowError."""
    with pytest.raises(BidstrainError) as error:
        cli.main(["-C", str(tmp_path), command])
    assert str(error.value).startswith(f"no configuration: the study folder {tmp_path} has no")
    assert "bidstrain init" in str(error.value)


def test_a_missing_configfile_is_named_with_the_study(tmp_path):
    with pytest.raises(BidstrainError, match="a relative --configfile is read from the study"):
        cli.main(["-C", str(tmp_path), "dry-run", "--configfile", "missing.yaml"])


def test_init_writes_a_config_and_refuses_a_second(tmp_path, monkeypatch, capsys):
    dataset = tmp_path / "my bids: #2"
    dataset.mkdir()
    monkeypatch.chdir(tmp_path)  # a relative dataset is the shell's: from here
    assert cli.main(["init", "my study", "--bids-dir", "my bids: #2", "--experiment", "a"]) == 0
    assert "next: bidstrain -C 'my study' validate" in capsys.readouterr().out
    config = tmp_path / "my study" / "config" / "config.yaml"
    assert yaml.safe_load(config.read_text()) == {
        "bids_dir": str(dataset),
        "train": {"experiment": "a"},
    }
    with pytest.raises(BidstrainError, match="has a configuration already"):
        cli.init_study(tmp_path / "my study", str(dataset), "first")
    with pytest.raises(BidstrainError, match="elsewhere: --bids-dir: no such dataset folder"):
        cli.init_study(tmp_path / "other", "elsewhere", "first")
    with pytest.raises(BidstrainError, match="config key 'train.experiment'"):
        cli.init_study(tmp_path / "other", str(dataset), "my exp/1")
    assert not (tmp_path / "other" / "config").exists()


def test_init_starts_from_configuration_files_merged_as_snakemake_merges_them(tmp_path):
    dataset = tmp_path / "bids"
    dataset.mkdir()
    lab = tmp_path / "lab.yaml"
    lab.write_text(
        "bids_dir: /elsewhere\nmodalities: [bold]\n"
        "train: {experiment: lab, epochs: 5, loss: {weights: {bold: 2.0}}}\n"
    )
    mine = tmp_path / "mine.yaml"
    mine.write_text("train: {epochs: 7, patch_size: 4}\nnormalize: {heldout: {run: ['2']}}\n")
    config, _ = cli.init_study(tmp_path / "study", str(dataset), settings=[lab, mine])
    text = config.read_text()
    assert yaml.safe_load(text) == {
        "bids_dir": str(dataset),  # --bids-dir over the files
        "modalities": ["bold"],
        "normalize": {"heldout": {"run": ["2"]}},
        # key by key, the later file over the earlier; the experiment of the files
        "train": {
            "experiment": "lab",
            "epochs": 7,
            "patch_size": 4,
            "loss": {"weights": {"bold": 2.0}},
        },
    }
    assert f"over them:\n#   {lab}\n#   {mine}\nbids_dir: " in text
    assert "Hold\n# out a BOLD run" not in text  # the files hold runs out
    assert "modalities: [bold]" in text  # lists on one line, as a person writes them

    config, _ = cli.init_study(tmp_path / "other", str(dataset), "mine", settings=[lab])
    assert yaml.safe_load(config.read_text())["train"]["experiment"] == "mine"


def test_init_warns_of_a_relative_path_that_names_a_file_here_but_not_in_the_study(
    tmp_path, monkeypatch, capsys
):
    """Relative paths in a configuration are the study folder's: one written from where
    init runs would be missing at the first run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    (tmp_path / "atlas_dseg.nii.gz").touch()  # here, not in the study
    (tmp_path / "study" / "tables").mkdir(parents=True)
    (tmp_path / "study" / "tables" / "atlas_dseg.tsv").touch()  # in the study: right
    settings = {
        "parcellation": {
            "name": "a",
            "space": "native",
            "path": "atlas_dseg.nii.gz",
            "labels": "tables/atlas_dseg.tsv",
        },
        "stimuli": {"text_embeddings": str(tmp_path / "atlas_dseg.nii.gz")},  # absolute
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(settings))
    assert cli.main(["init", "study", "--bids-dir", "ds", "--configfile", "s.yaml"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "bidstrain: warning: parcellation.path 'atlas_dseg.nii.gz' is read from the study "
        f"folder {tmp_path / 'study'}, which has no such file; from the current folder it "
        f"is {tmp_path / 'atlas_dseg.nii.gz'}: write that path in "
        "study/config/config.yaml"
    ]


def test_init_names_a_settings_file_it_cannot_take_and_writes_nothing(tmp_path):
    dataset = tmp_path / "bids"
    dataset.mkdir()
    files = {
        "missing.yaml": None,
        "broken.yaml": "train: [\n",
        "list.yaml": "- bold\n",
        "wrong.yaml": "train: {lr: fast}\n",
        "not-train.yaml": "train: fast\n",
    }
    expected = {
        "missing.yaml": "missing.yaml: --configfile: cannot read it",
        "broken.yaml": "broken.yaml: --configfile: cannot read it",
        "list.yaml": r"list.yaml: --configfile: not a mapping of keys \(a list\)",
        "wrong.yaml": r"config key 'train.lr'.*\(with the keys of .*wrong.yaml\)",
        "not-train.yaml": r"config key 'train'.*\(with the keys of .*not-train.yaml\)",
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(BidstrainError, match=expected[name]):
            cli.main(
                [
                    "init",
                    str(tmp_path / "study"),
                    "--bids-dir",
                    str(dataset),
                    "--configfile",
                    str(tmp_path / name),
                ]
            )
    assert not (tmp_path / "study").exists()
    (tmp_path / "empty.yaml").write_text("")
    config, _ = cli.init_study(tmp_path / "study", str(dataset), settings=[tmp_path / "empty.yaml"])
    assert yaml.safe_load(config.read_text()) == {
        "bids_dir": str(dataset),
        "train": {"experiment": "main"},
    }


SLOW_WORKFLOW = """\
rule all:
    input: "done-a", "done-b"

rule quick:
    output: "done-a"
    log: "logs/quick.log"
    shell: "echo quick finished > {log}; touch {output}"

rule long:
    output: "done-b"
    log: "logs/long.log"
    shell: "echo epoch 1 of 3 > {log}; echo epoch 2 of 3 >> {log}; \\
        while [ ! -e go ]; do sleep 0.1; done; touch {output}"
"""


@pytest.mark.integration
def test_status_shows_the_running_job_and_its_last_log_line(tmp_path):
    """A real Snakemake run with a job that waits: status names it and its log's last
    line while it runs, and says the run ended after."""
    (tmp_path / "Snakefile").write_text(SLOW_WORKFLOW)
    assert "no run of the workflow" in status.describe(tmp_path)
    run = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--nolock"],
        cwd=tmp_path,
        env=snakemake_env(uses_slurm=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while "epoch 2 of 3" not in (shown := status.describe(tmp_path)):
            assert run.poll() is None and time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert ": in progress" in shown
        running = shown.split("running:\n", 1)[1]
        assert running.startswith("  long (job ") and "logs/long.log" in running
        assert "quick" not in running
    finally:
        (tmp_path / "go").touch()
        assert run.wait(timeout=120) == 0
    ended = status.describe(tmp_path)
    assert ": ended" in ended and "3 of 3 steps (100%) done" in ended
    assert "running:" not in ended


def test_status_lists_a_failed_job_with_its_log(tmp_path, capsys):
    (tmp_path / "Snakefile").write_text(
        'rule fails:\n    output: "x"\n    log: "logs/fails.log"\n'
        '    shell: "echo bidstrain: error: bad input > {log}; exit 1"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--nolock"],
        cwd=tmp_path,
        env=snakemake_env(uses_slurm=False),
        capture_output=True,
    )
    assert result.returncode != 0
    for listing in ("--summary", "--rulegraph"):  # their logs run nothing: not the newest run
        subprocess.run(
            [sys.executable, "-m", "snakemake", listing],
            cwd=tmp_path,
            env=snakemake_env(uses_slurm=False),
            capture_output=True,
            check=True,
        )
    assert len(list((tmp_path / ".snakemake" / "log").glob("*.snakemake.log"))) == 3
    shown = status.describe(tmp_path)
    failed = shown.split("failed:\n", 1)[1]
    assert failed.startswith("  fails (job ") and "bidstrain: error: bad input" in failed
    # --follow prints it once and returns: the run has ended
    status.follow(tmp_path, interval=0.01)
    assert capsys.readouterr().out == shown + "\n"


def test_a_run_with_nothing_to_do_has_ended(tmp_path, capsys):
    (tmp_path / "Snakefile").write_text(
        'rule done:\n    output: "x"\n    shell: "touch {output}"\n'
    )
    for _ in range(2):  # the second run finds nothing to do
        subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "1", "--nolock"],
            cwd=tmp_path,
            env=snakemake_env(uses_slurm=False),
            capture_output=True,
            check=True,
        )
    newest = status.newest_log(tmp_path)
    assert "Nothing to be done" in newest.read_text()
    shown = status.describe(tmp_path)
    assert shown.startswith(f"run {newest.name.removesuffix('.snakemake.log')}: ended")
    status.follow(tmp_path, interval=0.01)  # returns: the run has ended
    assert capsys.readouterr().out == shown + "\n"


def test_a_job_freezes_its_objects_at_exit_and_still_runs_exit_handlers(tmp_path):
    # an exit handler registered before run_cli runs after its freeze (handlers run last
    # in, first out): it sees the frozen objects, and a file the job left open is flushed
    code = (
        "import atexit, gc, sys\n"
        "from bidstrain.errors import run_cli\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        f"log = open({str(tmp_path / 'log.txt')!r}, 'w')\n"
        "run_cli(lambda argv: log.write('written'), [])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout.split()[-1]) > 1000
    assert (tmp_path / "log.txt").read_text() == "written"


def test_an_error_a_dataloader_worker_raised_is_printed_as_its_message(capsys):
    """torch re-raises a worker's exception in the main process with the worker's
    traceback as its text: the job still prints the one line of the error."""
    from bidstrain.errors import run_cli
    from torch._utils import ExceptionWrapper

    def main(argv):
        try:
            raise BidstrainError("shard index is corrupt\nrerun normalize", path="s.zarr")
        except BidstrainError:
            ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 1").reraise()

    with pytest.raises(SystemExit) as exited:
        run_cli(main, [])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "bidstrain: error: s.zarr: shard index is corrupt\nrerun normalize\n"
    )


def test_params_reasons_pair_the_snapshots_of_snakemakes_own_reason(tmp_path):
    """The reason line as the installed Snakemake writes it: each plan file's snapshot
    before and now, other params (a hash) beside them, read and compared; a snapshot
    gone is said, not a traceback; past SHOWN_FILES plan files, a count."""
    from snakemake.persistence import ParamsChange

    snapshots = tmp_path / paths.PLAN_SNAPSHOTS
    snapshots.mkdir(parents=True)
    for digest, lr in (("aaaa", 0.001), ("bbbb", 0.002)):
        (snapshots / f"{digest}-train.json").write_text(json.dumps({"lr": lr, "epochs": 3}))
    (snapshots / "cccc-task-rest.args").write_text("x.zarr\ny.zarr\n")
    (snapshots / "dddd-task-rest.args").write_text("x.zarr\n")
    snap = f"{paths.PLAN_SNAPSHOTS}/{{}}".format
    change = ParamsChange(
        only_old={repr(snap("aaaa-train.json")), "'aaaa'", repr(snap("cccc-task-rest.args"))},
        only_new={repr(snap("bbbb-train.json")), "'bbbb'", repr(snap("dddd-task-rest.args"))},
    )
    reasons = why.RerunReasons()
    for line in ("rule train:", f"    reason: Params have changed since last execution: {change}"):
        reasons.add(line + "\n")
    reasons.add("    reason: Input files updated by another job: results/x.zarr\n")
    assert reasons.explain(tmp_path) == [
        "bidstrain: the settings that changed since these jobs' outputs were made:",
        '  task-rest.args: ["x.zarr", "y.zarr"] -> ["x.zarr"]',
        "  train.json: lr 0.001 -> 0.002",
    ]
    assert why.RerunReasons().explain(tmp_path) == []

    gone = why.RerunReasons()
    gone.add(f"before: {snap('eeee-sub-01.json')} now: {snap('ffff-sub-01.json')}")
    assert gone.explain(tmp_path)[1:] == [
        f"  sub-01.json: {snap('eeee-sub-01.json')} cannot be read (FileNotFoundError): "
        "not compared"
    ]
    many = why.RerunReasons()
    for i in range(why.SHOWN_FILES + 2):
        many.add(f"before: {snap(f'{i:04x}-sub-{i}.json')} now: {snap(f'{i:04x}0-sub-{i}.json')}")
    assert len(many.explain(tmp_path)) == 1 + why.SHOWN_FILES + 1
    assert many.explain(tmp_path)[-1] == "  and 2 more plan files"


#: A job that takes a plan file as an input, as align_stimuli takes its spec.
PLAN_INPUT_JOB = """\
rule aligned:
    input: "results/plan/stimuli/align.json"
    output: "results/aligned.txt"
    shell: "cp {input} {output}"
"""


@pytest.mark.integration
def test_a_changed_plan_input_is_explained_from_snakemakes_record(tmp_path, monkeypatch):
    """Snakemake's reason for a plan file that is an input names the file only
    ("Updated input files"): the version the outputs were made with is found by the
    checksum Snakemake recorded, and compared key by key with the new one."""
    from bidstrain.plan import write_plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Snakefile").write_text(PLAN_INPUT_JOB)
    spec = "results/plan/stimuli/align.json"
    write_plan({spec: json.dumps({"stimuli": {"delays": [1, 2, 3]}})})
    env = snakemake_env(uses_slurm=False)
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1"]
    made = subprocess.run(snakemake, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    write_plan({spec: json.dumps({"stimuli": {"delays": [1, 2]}})})
    dry = subprocess.run([*snakemake, "-n"], env=env, capture_output=True, text=True)
    assert f"reason: Updated input files: {spec}" in dry.stdout, dry.stdout
    reasons = why.RerunReasons()
    for line in dry.stdout.splitlines(keepends=True):
        reasons.add(line)
    assert reasons.explain(tmp_path) == [
        "bidstrain: the settings that changed since these jobs' outputs were made:",
        "  align.json: stimuli.delays [1, 2, 3] -> [1, 2]",
    ]
    shutil.rmtree(tmp_path / ".snakemake" / "metadata")  # no record: nothing to compare
    unrecorded = why.RerunReasons()
    for line in dry.stdout.splitlines(keepends=True):
        unrecorded.add(line)
    assert unrecorded.updated == {spec: "results/aligned.txt"}
    assert unrecorded.explain(tmp_path) == []


def test_run_to_end_passes_each_output_line_on_and_to_the_reader(tmp_path, capsys):
    """Lines as they come, a byte that is not UTF-8 (a path in another encoding) replaced,
    and the command's status."""
    script = (
        "import sys; print('one', flush=True); sys.stdout.buffer.write(b'caf\\xe9\\n'); sys.exit(4)"
    )
    seen = []
    code = cli.run_to_end(
        [sys.executable, "-c", script], cwd=tmp_path, env=None, on_output=seen.append
    )
    assert code == 4
    assert seen == ["one\n", "caf\ufffd\n"]
    assert capsys.readouterr().out == "one\ncaf\ufffd\n"
