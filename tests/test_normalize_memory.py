"""The normalize job's allocator setting (:mod:`bidstrain.normalize.memory`)."""

from __future__ import annotations

import platform
import subprocess
import sys


def test_the_thresholds_are_set_on_glibc_and_nothing_fails_elsewhere():
    """In a process of its own: the setting lasts for the process."""
    script = "from bidstrain.normalize.memory import fix_mmap_threshold as f; print(f())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
