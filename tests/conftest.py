"""Shared fixtures: the demo dataset and a runner for the real `snakemake` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bidstrain.demo.generate import DemoSpec, make_demo

REPO = Path(__file__).resolve().parents[1]


def snakemake_command(
    workdir: Path, *args: str, config: dict | None = None, profile: str | None = None
) -> list[str]:
    """The ``snakemake`` command line that :func:`run_snakemake` runs (see there)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--nolock",
    ]
    if profile:
        command += ["--profile", str(REPO / "profiles" / profile)]
    command += args
    if config:  # last: --config takes every following word as KEY=VALUE
        command += ["--config", *(f"{key}={value}" for key, value in config.items())]
    return command


#: The SLURM client configuration of a run that does not use SLURM: an empty file, on
#: which ``scontrol`` fails at once. Every ``snakemake`` start imports the SLURM executor
#: plugin, which runs ``scontrol show config`` while it builds the help text of its
#: ``--slurm-status-command`` option (``_get_status_command_help`` in
#: ``snakemake_executor_plugin_slurm/__init__.py``, through ``get_min_job_age``); with
#: /etc/slurm/slurm.conf present and no controller answering, that call waits 10 s (its
#: timeout) per start. A nonexistent path is worse: scontrol retries it for about 60 s.
NO_SLURM_CONF = "/dev/null"


def snakemake_env(*, uses_slurm: bool) -> dict[str, str]:
    """Environment of a ``snakemake`` run: this one, with the package importable.

    Parameters
    ----------
    uses_slurm : bool
        False for a run whose jobs run locally: it gets ``SLURM_CONF`` =
        :data:`NO_SLURM_CONF`, so its start does not wait on the SLURM controller (which
        the run does not use, and which only tests that need it start).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    if not uses_slurm:
        env["SLURM_CONF"] = NO_SLURM_CONF
    return env


def run_bench(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``bench/<script>`` with ``args`` as its docstring says (the package on
    ``PYTHONPATH``), in ``cwd``; its output is captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
        cwd=cwd,
    )


def run_snakemake(
    workdir: Path,
    *args: str,
    config: dict | None = None,
    check: bool = True,
    profile: str | None = None,
) -> subprocess.CompletedProcess:
    """Run the real ``snakemake`` on the repository's Snakefile inside ``workdir``.

    Parameters
    ----------
    workdir : Path
        Working directory (results/ and logs/ are written there).
    *args : str
        Targets and extra command-line options.
    config : dict, optional
        ``--config KEY=VALUE`` overrides (values are passed as YAML).
    check : bool
        Fail the test with snakemake's output when it exits non-zero.
    profile : str, optional
        A profile under ``profiles/`` (``"slurm"``: jobs go to SLURM; such a run never
        returns while a job is pending, see ``tests/slurm_support.py`` for runs that
        must be stopped). ``--cores 2`` still applies: it caps a group job's CPUs. Any
        other run does not see the SLURM cluster (see :func:`snakemake_env`).
    """
    command = snakemake_command(workdir, *args, config=config, profile=profile)
    env = snakemake_env(uses_slurm=profile == "slurm")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    """Close the figures a test drew and did not save (the report's figure functions
    return them open, for the test to inspect; ``save_figure`` closes them)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture(scope="session")
def demo_bids(tmp_path_factory) -> Path:
    """The default demo dataset, written once per test session. Do not modify it."""
    return make_demo(tmp_path_factory.mktemp("demo") / "bids", DemoSpec())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_bids) -> Path:
    """A working directory in which the whole workflow (target ``all``) ran on the demo data.

    Tests read its results; they must not modify them.
    """
    workdir = tmp_path_factory.mktemp("demo_run")
    run_snakemake(workdir, "all", config={"bids_dir": demo_bids})
    return workdir


# --- SLURM test cluster (tests/slurm_cluster.sh) ---------------------------------------

SLURM_CLUSTER_SCRIPT = REPO / "tests" / "slurm_cluster.sh"
#: Fixtures that start the cluster: a test that uses one must carry the ``slurm`` marker.
SLURM_FIXTURES = frozenset({"slurm_cluster", "slurm_two_nodes"})
#: The partition of the cluster's two one-GPU nodes (``MULTI_PARTITION`` in the script).
MULTI_PARTITION = "multi"


#: The test files that use the SLURM cluster or ``demo_run``. Under ``make test``
#: (``pytest -n 2``) they run as one unit in one worker (:func:`pytest_xdist_make_scheduler`):
#: the cluster is started once, and ``demo_run``, a session fixture and so built once per
#: worker, is built once. A test elsewhere that uses either is refused at collection.
WORKFLOW_FILES = frozenset(
    {
        "test_checks_workflow.py",
        "test_embed_workflow.py",
        "test_report_workflow.py",
        "test_train_workflow.py",
        "test_slurm_cluster.py",
        "test_slurm_multinode.py",
        "test_slurm_reruns.py",
        "test_slurm_workflow.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that starts the SLURM cluster without the ``slurm`` marker, so that
    ``-m "not slurm"`` selects exactly the tests that run without it, and a test of the
    cluster or of ``demo_run`` outside :data:`WORKFLOW_FILES`; the files of
    :data:`WORKFLOW_FILES` are collected first."""
    unmarked = [
        item.nodeid
        for item in items
        if SLURM_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slurm") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that use a SLURM fixture must be marked `slurm` "
            "(e.g. `pytestmark = pytest.mark.slurm`): " + ", ".join(unmarked)
        )
    elsewhere = [
        item.nodeid
        for item in items
        if (item.get_closest_marker("slurm") or "demo_run" in getattr(item, "fixturenames", ()))
        and item.path.name not in WORKFLOW_FILES
    ]
    if elsewhere:
        raise pytest.UsageError(
            "tests of the SLURM cluster or of demo_run must be in a file of WORKFLOW_FILES "
            "(tests/conftest.py): " + ", ".join(elsewhere)
        )
    # the longest unit first: with --no-loadscope-reorder a worker starts it at once
    items.sort(key=lambda item: item.path.name not in WORKFLOW_FILES)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scheduling by file (``--dist loadfile``), except that the files of
    :data:`WORKFLOW_FILES` are one unit. (Its ``--dist loadgroup`` with ``xdist_group``
    marks set here does not group under pytest 9.2: pytest-xdist issue 1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class WorkflowInOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "workflow" if Path(path).name in WORKFLOW_FILES else path

    return WorkflowInOneWorker(config, log)


def _slurm_cluster_script(command: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["bash", str(SLURM_CLUSTER_SCRIPT), command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(
            err.cmd,
            124,
            f"did not finish within {timeout:.0f} s\n{err.stdout or ''}",
            err.stderr or "",
        )


@pytest.fixture(scope="session")
def slurm_cluster_up() -> None:
    """Install and start the SLURM test cluster, once per session and only when a test
    needs it (no test outside the ``slurm`` marker does).

    FAILS, never skips, when the cluster does not come up, with the script's output: SLURM
    dispatch is part of what the tests must prove (pytest reports the same failure for
    every later test that needs the cluster, without running the script again).
    """
    for command, timeout in (("install", 600), ("start", 180)):
        result = _slurm_cluster_script(command, timeout)
        if result.returncode != 0:
            pytest.fail(
                f"SLURM test cluster: `tests/slurm_cluster.sh {command}` failed "
                f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )


@pytest.fixture(scope="session")
def slurm_cluster(slurm_cluster_up) -> Iterator[dict[str, str]]:
    """A running SLURM cluster whose default partition has one node with two fake GPUs
    (tests/slurm_cluster.sh).

    Installs Debian's munge/slurm packages when missing and starts the daemons (root
    needed); fails when they do not come up (see :func:`slurm_cluster_up`). The cluster
    keeps running after the session (other test sessions may share it):
    `sudo tests/slurm_cluster.sh stop` ends it.

    Returns ``{"partition": ..., "node": ...}``; ``BIDSTRAIN_SLURM_PARTITION`` is set for
    ``profiles/slurm`` while the session runs.
    """
    partition = os.environ.get("BIDSTRAIN_SLURM_PARTITION", "debug")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    previous = os.environ.get("BIDSTRAIN_SLURM_PARTITION")
    os.environ["BIDSTRAIN_SLURM_PARTITION"] = partition
    yield {"partition": partition, "node": node}
    if previous is None:
        os.environ.pop("BIDSTRAIN_SLURM_PARTITION", None)


@pytest.fixture(scope="session")
def slurm_two_nodes(slurm_cluster_up) -> dict[str, object]:
    """Two SLURM nodes of the same cluster, one fake GPU each, in their own partition.

    Both are slurmd daemons on this machine (``slurmd -N n1``, ``slurmd -N n2``: distinct
    ports, spool, pid and log files), so a job with ``--partition=<partition> --nodes=2``
    gets a real two-node allocation: ``SLURM_JOB_NODELIST`` names both, ``srun`` starts
    one task on each (``SLURMD_NODENAME`` differs) and ``--gpus-per-node=1`` or
    ``--gres=gpu:1`` gives each its GPU (``CUDA_VISIBLE_DEVICES=0`` on both). The
    partition is not the default one: a job must ask for it. Fails when a node is missing
    or not usable.

    Returns ``{"partition": "multi", "nodes": ["n1", "n2"], "gpus_per_node": 1}``.
    """
    listing = subprocess.run(
        ["sinfo", "--noheader", "--Node", f"--partition={MULTI_PARTITION}", "--format=%N %t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    states = dict(line.split() for line in listing.stdout.splitlines())
    if len(states) != 2 or not set(states.values()) <= {"idle", "mix", "alloc", "comp"}:
        pytest.fail(
            f"SLURM partition {MULTI_PARTITION}: expected 2 usable nodes, sinfo says "
            f"{states} (exit {listing.returncode}) {listing.stderr}"
        )
    return {"partition": MULTI_PARTITION, "nodes": sorted(states), "gpus_per_node": 1}
