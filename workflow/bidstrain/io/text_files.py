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
    path: str | Path, *, subject: str | None = None, lenient: bool = False
) -> tuple[tuple[str, ...], list[dict[str, str | None]]]:
    """The column names and rows of a tab-separated table (:func:`read_utf8`).

    Fields are taken as they stand between tabs: BIDS tables have no quoting, so a ``"``
    is part of its field (a word of a transcript, a label name) and never joins lines.

    Parameters
    ----------
    path : str or Path
        The table.
    subject : str, optional
        Named in an error.
    lenient : bool
        Accept rows of another length than the header (a shorter row has None in its
        missing columns, a longer one loses its extra fields) and repeated column names
        (the last one's value kept): for tables of which only one column is read, such as
        ``participants.tsv``.

    Raises
    ------
    BidstrainError
        Unless ``lenient``: naming the line of a row with another number of fields than
        the header (empty fields after the header's last column aside), or the column
        names the header repeats.
    """
    text = read_utf8(path, subject=subject)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = tuple(next(reader, ()))
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated and not lenient:
        raise BidstrainError(
            f"the header repeats column {', '.join(map(repr, repeated))}",
            path=path,
            subject=subject,
        )
    rows = []
    for fields in reader:
        if not fields:  # a blank line
            continue
        if len(fields) > len(header) and not any(fields[len(header) :]):
            fields = fields[: len(header)]  # trailing tabs (a spreadsheet's export) hold nothing
        if len(fields) != len(header) and not lenient:
            raise BidstrainError(
                f"line {reader.line_num}: {len(fields)} tab-separated fields where the "
                f"header has {len(header)} columns ({', '.join(header)})",
                path=path,
                subject=subject,
            )
        missing = [None] * (len(header) - len(fields))
        # (lenient: a longer row loses its extra fields)
        rows.append(dict(zip(header, fields + missing, strict=False)))
    return header, rows
