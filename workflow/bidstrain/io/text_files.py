"""Text files of a dataset (tables, transcripts, word vectors), read as BIDS requires them:
UTF-8, a byte order mark allowed."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bidstrain.errors import BidstrainError


def read_utf8(path: str | Path, *, subject: str | None = None) -> str:
    """The text of ``path``, lines ending in ``\\n``.

    Raises
    ------
    BidstrainError
        Naming the file, the subject, and the line and value of the first byte that is not
        UTF-8 (a table saved as Latin-1 or Windows-1252, say).
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise BidstrainError(
            f"line {line}: byte {error.object[error.start]:#04x} is not UTF-8 text; BIDS "
            "text files are UTF-8: save the file as UTF-8",
            path=path,
            subject=subject,
        ) from None


def read_tsv(
    path: str | Path, *, subject: str | None = None
) -> tuple[tuple[str, ...], list[dict[str, str | None]]]:
    """The column names and rows of a tab-separated table (:func:`read_utf8`); a row shorter
    than the header has None in its missing columns."""
    reader = csv.DictReader(
        io.StringIO(read_utf8(path, subject=subject), newline=""), delimiter="\t"
    )
    rows = list(reader)
    return tuple(reader.fieldnames or ()), rows
