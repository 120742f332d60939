"""Whether a SLURM controller answers, and the environment of a run that needs none.

Every ``snakemake`` start imports the SLURM executor plugin, which runs ``scontrol show
config`` while it builds its command-line help. Where a SLURM client is installed and no
controller answers, that call waits about 10 s, at every start; with ``SLURM_CONF`` set
to ``/dev/null`` (an empty configuration) ``scontrol`` fails at once. The Makefile makes
the same decision with ``timeout 1 scontrol ping``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

#: The SLURM client configuration of a run without a controller: empty, so ``scontrol``
#: fails at once (a nonexistent path is worse: scontrol retries it for about a minute).
NO_SLURM_CONF = "/dev/null"


def controller_answers(timeout: float = 1.0, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``scontrol ping`` reports a controller up within ``timeout`` seconds.

    Parameters
    ----------
    timeout : float
        Seconds to wait for ``scontrol``.
    env : mapping, optional
        Environment of the call (``PATH`` finds ``scontrol``); this process's by default.

    Returns
    -------
    bool
        False when ``scontrol`` is not installed, fails, says no controller is UP, or does
        not answer in time.
    """
    env = dict(os.environ if env is None else env)
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        return False
    try:
        result = subprocess.run(
            [scontrol, "ping"], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and " is UP" in result.stdout


def run_environment(env: Mapping[str, str], *, uses_slurm: bool) -> dict[str, str]:
    """The environment of a ``snakemake`` run.

    ``env``, with ``SLURM_CONF`` = :data:`NO_SLURM_CONF` when the run does not submit to
    SLURM, ``SLURM_CONF`` is not set already, a ``scontrol`` is installed and no
    controller answers within a second; else ``env`` unchanged.

    Parameters
    ----------
    env : mapping
        The caller's environment.
    uses_slurm : bool
        Whether the run submits its jobs to SLURM (then it needs the real configuration).
    """
    env = dict(env)
    if uses_slurm or "SLURM_CONF" in env:
        return env
    if shutil.which("scontrol", path=env.get("PATH")) and not controller_answers(env=env):
        env["SLURM_CONF"] = NO_SLURM_CONF
    return env
