"""BOLD frames that no window reads: never left out silently.

With ``train.window`` = W a BOLD sample is W consecutive frames of a segment of a run
(:mod:`bidstrain.train.windows`). Two reasons keep frames out of every window:

``invalid``
    frames of the run's time grid left out of the store: volumes the sample mask drops,
    frames whose interpolation needed one, and in a cross-subject average frames valid
    in fewer than ``average.min_subjects`` subjects (the store's ``n_invalid_frames``);
``too_short``
    frames of a segment (a run, or a piece of it between invalid frames) shorter than W.

The check counts both per modality and per subject, runs and frames, for the stores
training and validation read. Frames too short for a window are a warning, and with
``checks.strict`` a failure naming the subject, the run and the lengths.

A window of W frames must span one duration: stores at different repetition times
(runs of a multi-site cohort left at their own TR, ``time.tr: native``) fail the check,
whatever ``checks.strict``, naming each TR and its subjects.
"""

from __future__ import annotations

from collections.abc import Sequence

from bidstrain.checks import Check, verdict
from bidstrain.checks.scan import StoreScan
from bidstrain.io.store import read_segments
from bidstrain.train.windows import window_counts

NAME = "bold_windows"


def check_windows(scans: Sequence[StoreScan], *, window: int, strict: bool) -> Check:
    """Runs and frames of BOLD stores that no window reads (module docstring).

    Parameters
    ----------
    scans : sequence of StoreScan
        The BOLD stores training and validation read.
    window : int
        ``train.window``.
    strict : bool
        ``checks.strict``: frames too short for a window fail the check.

    Returns
    -------
    Check
        ``values``: ``{"window", "modalities": {"bold": {"runs", "frames", "runs_left_out",
        "frames_too_short", "frames_invalid", "subjects": {subject: {...the same}}}}}``.
    """
    totals = _counts()
    subjects: dict[str, dict[str, int]] = {}
    problems = []
    for scan in scans:
        segments = read_segments(scan.path)
        counts = window_counts(segments, window, 1)
        short = [n for n, c in zip(segments, counts, strict=True) if c == 0]
        invalid = int(scan.meta.n_invalid_frames)
        row = {
            "runs": 1,
            "frames": scan.n_time + invalid,
            "runs_left_out": int(not counts.any()),
            "frames_too_short": int(sum(short)),
            "frames_invalid": invalid,
        }
        subject = scan.meta.subject or "average"
        mine = subjects.setdefault(subject, _counts())
        for key, value in row.items():
            totals[key] += value
            mine[key] += value
        if short:
            problems.append(
                f"sub-{subject} {scan.path}: segments of {short} frames are shorter than "
                f"train.window = {window} ({sum(short)} of its {scan.n_time} frames left out"
                f"{', the whole run' if not counts.any() else ''})"
            )
    values = {"window": window, "modalities": {"bold": {**totals, "subjects": subjects}}}
    mixed = _mixed_repetition_times(scans, window)
    ok = (
        f"every BOLD frame can be in a window of {window} frames ({totals['frames_invalid']} "
        "frames left out of the stores' time grids)"
    )
    if not problems:
        return verdict(NAME, mixed, [], ok, values)
    summary = (
        f"{totals['frames_too_short']} BOLD frames of {len(problems)} runs are in no window "
        f"({totals['runs_left_out']} runs entirely; lower train.window, or drop the short "
        "runs): " + "; ".join(problems)
    )
    failures = mixed + ([summary] if strict else [])
    return verdict(NAME, failures, [] if strict else [summary], ok, values)


def _mixed_repetition_times(scans: Sequence[StoreScan], window: int) -> list[str]:
    """A failure when the stores are at more than one repetition time (none otherwise)."""
    by_tr: dict[float, list[str]] = {}
    for scan in scans:
        tr = round(float(scan.meta.repetition_time or 0.0), 6)
        by_tr.setdefault(tr, []).append(f"sub-{scan.meta.subject or 'average'}")
    if len(by_tr) < 2:
        return []
    listing = "; ".join(
        f"{tr:g} s: {', '.join(sorted(set(names)))}" for tr, names in sorted(by_tr.items())
    )
    return [
        f"BOLD stores at {len(by_tr)} repetition times ({listing}): windows of {window} "
        "frames would span different durations; set time.tr to put every run on one grid"
    ]


def _counts() -> dict[str, int]:
    return dict.fromkeys(
        ("runs", "frames", "runs_left_out", "frames_too_short", "frames_invalid"), 0
    )
