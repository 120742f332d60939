"""Text features: the words spoken in each TR, as a hashed bag of words or mean word vectors.

Words come with onsets on the stimulus's clock, from a transcript in ``stimuli/`` (a
SubRip ``.srt`` subtitle file, or a TSV with ``onset`` and ``word`` columns) or from the
``word`` column of a run's ``events.tsv`` (read the same way, on the run's clock).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bidstrain.errors import BidstrainError, relative_to_study
from bidstrain.io.text_files import read_tsv, read_utf8
from bidstrain.stimuli.bins import tr_bin

log = logging.getLogger(__name__)

#: Extensions read as transcripts.
TEXT_EXTENSIONS = frozenset({".srt", ".tsv"})
#: Typographic apostrophes, read as ``'``.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
#: A word: letters and digits (of any script), joined inside by single apostrophes,
#: hyphens, full stops or commas (``don't``, ``well-known``, ``u.s``, ``1,000``).
WORD = re.compile(r"[^\W_]+(?:['\-.,][^\W_]+)*")
#: An abbreviation of single letters (``u.s``, ``e.g``): it keeps its final full stop.
_ABBREVIATION = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
_CUE_TIME = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)\s*-->\s*(\d+):(\d+):(\d+)[,.](\d+)")
#: Formatting in a cue's text, not spoken: HTML-like tags (``<i>``, ``<font ...>``) and
#: SubStation override blocks (``{\an8}``).
_CUE_MARKUP = re.compile(r"<[^>]*>|\{[^}]*\}")


@dataclass(frozen=True)
class Word:
    """One spoken word and its onset in seconds."""

    onset: float
    text: str


def spoken_words(text: str) -> list[str]:
    """The words of a text, in lower case: :data:`WORD`, so that punctuation of any
    script around a word is left out (``"Hello,"``, ``„Hallo“``, ``مرحبا،``) and
    ``don't``, ``don\u2019t``, ``well-known`` and ``1,000`` are one word each; ``u.s.``
    and ``e.g.`` keep their final full stop. Scripts written without spaces (Chinese,
    Japanese, Thai) are cut at their punctuation only: give their words one per row of a
    word table."""
    words = []
    lowered = text.translate(_APOSTROPHES).lower()
    for match in WORD.finditer(lowered):
        word = match.group()
        if _ABBREVIATION.fullmatch(word) and lowered[match.end() : match.end() + 1] == ".":
            word += "."
        words.append(word)
    return words


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 10 ** len(ms)


def read_srt(path: Path, *, subject: str | None = None) -> list[Word]:
    """The words of a SubRip file, each cue's words (its formatting tags left out) spread
    evenly over the cue (``subject``: named in errors)."""
    words = []
    text = read_utf8(path, subject=subject)
    for block in filter(None, re.split(r"\n\s*\n", text.strip())):
        lines = block.strip().splitlines()
        times = [_CUE_TIME.search(line) for line in lines]
        at = next((i for i, match in enumerate(times) if match), None)
        if at is None:
            raise BidstrainError(
                f"subtitle cue without a time line: {lines[:2]}", path=path, subject=subject
            )
        start = _seconds(*times[at].groups()[:4])
        end = _seconds(*times[at].groups()[4:])
        tokens = spoken_words(_CUE_MARKUP.sub(" ", " ".join(lines[at + 1 :])))
        step = (end - start) / max(len(tokens), 1)
        words += [Word(start + i * step, token) for i, token in enumerate(tokens)]
    return words


def read_word_table(path: Path, *, subject: str | None = None) -> list[Word]:
    """The words of a TSV with ``onset`` and ``word`` columns (a transcript or an
    ``events.tsv``); rows whose word is empty or ``n/a`` are not words (``subject``: named
    in errors)."""
    return table_words(read_tsv(path, subject=subject)[1], path, subject=subject)


def table_words(
    rows: Sequence[Mapping[str, str]], path: Path, *, subject: str | None = None
) -> list[Word]:
    """The words of the rows of a word table read by :func:`read_word_table` (``path``
    and ``subject`` named in errors): for a caller that has read the table already."""
    if rows and not {"onset", "word"} <= set(rows[0]):
        raise BidstrainError(
            f"a word table needs 'onset' and 'word' columns; it has {sorted(rows[0])}",
            path=path,
            subject=subject,
        )
    words = []
    for line, row in enumerate(rows, start=2):
        if row["word"] in ("", "n/a", None):
            continue
        try:
            onset = float(row["onset"])
        except (TypeError, ValueError):
            onset = math.nan
        if not math.isfinite(onset):
            raise BidstrainError(
                f"line {line}: onset {row['onset']!r} of word {row['word']!r} is not a number",
                path=path,
                subject=subject,
            )
        words += [Word(onset, token) for token in spoken_words(row["word"])]
    return words


def read_words(path: str | Path, *, subject: str | None = None) -> list[Word]:
    """The words of a transcript (``.srt`` or ``.tsv``), sorted by onset.

    Parameters
    ----------
    path : str or Path
        The transcript.
    subject : str, optional
        Named in errors: the subject of a run that presents it (the first one read, for a
        transcript that many runs present).

    Raises
    ------
    BidstrainError
        Naming the file (and ``subject``): not UTF-8, a table without ``onset`` and
        ``word`` columns or a word without a numeric onset (by line), a subtitle cue
        without a time line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXT_EXTENSIONS:
        raise BidstrainError(
            f"not a transcript (one of {sorted(TEXT_EXTENSIONS)})", path=path, subject=subject
        )
    read = read_srt if suffix == ".srt" else read_word_table
    words = read(path, subject=subject)
    return sorted(words, key=lambda word: word.onset)


def words_per_bin(words: Sequence[Word], tr: float, n_bins: int | None = None) -> list[list[str]]:
    """The words whose onset falls in each TR bin; ``n_bins`` by default reaches the last
    word."""
    n_bins = n_bins if n_bins is not None else (tr_bin(words[-1].onset, tr) + 1 if words else 0)
    bins: list[list[str]] = [[] for _ in range(n_bins)]
    for word in words:
        k = tr_bin(word.onset, tr)
        if 0 <= k < n_bins:
            bins[k].append(word.text)
    return bins


def hashed_bag(bins: Sequence[Sequence[str]], n_features: int) -> np.ndarray:
    """Word counts per TR, hashed into ``n_features`` columns (scikit-learn's
    HashingVectorizer, no sign flipping, no normalization).

    Returns
    -------
    ndarray, shape (n_bins, n_features), float64
        Each row sums to the number of words of its bin.
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        n_features=n_features,
        alternate_sign=False,
        norm=None,
        analyzer=lambda words: words,
    )
    return vectorizer.transform(bins).toarray().astype(np.float64)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _vector_length(fields: Sequence[str]) -> int:
    """How many of a line's last fields are numbers, the first field aside (the word, even
    when it is a number itself: ``1999 0.1 0.2``)."""
    numbers = 0
    for field in reversed(fields[1:]):
        if not _is_number(field):
            break
        numbers += 1
    return numbers


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Word vectors from a text table: a word, then its values, one word a line, separated
    by tabs or spaces (GloVe's format; word2vec's first line, two counts, is skipped).

    The vector length is word2vec's header's, or the count of numbers ending the first
    line. A line's last that many fields are its vector and what comes before them its
    word, so a word may hold spaces (GloVe 840B's ``. . .``). Words are looked up in lower
    case: where the table repeats a word, in another case or not, the first vector is kept
    (GloVe lists words by frequency) and the repeats are counted in the log.

    Raises
    ------
    BidstrainError
        When the file is missing, not UTF-8 or holds no vector, a value is not a finite
        number, a word has no value, or a line holds fewer or more numbers than the first
        vector (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise BidstrainError(f"word embeddings file not found{relative_to_study(path)}", path=path)
    vectors: dict[str, np.ndarray] = {}
    dim, repeats = None, 0
    for line, text in enumerate(read_utf8(path).splitlines(), start=1):
        fields = text.split()
        if line == 1 and len(fields) == 2 and all(map(str.isdigit, fields)):
            dim = int(fields[1])
            continue
        if not fields:
            continue
        dim = dim or _vector_length(fields)
        word, values = fields[0], fields[1:]
        if dim and len(fields) > dim:
            word, *values = text.rsplit(maxsplit=dim)
        length = _vector_length(fields)
        problem = None
        if len(fields) == 1:
            problem = "has no value"
        elif not all(map(_is_number, values)) or not np.isfinite(np.array(values, float)).all():
            problem = "holds a value that is not a number"
        elif length != dim:
            problem = f"has length {length}, the first vector {dim}"
        if problem:
            raise BidstrainError(f"line {line}: the vector of {word!r} {problem}", path=path)
        repeats += word.lower() in vectors
        vectors.setdefault(word.lower(), np.array(values, dtype=np.float64))
    if not vectors:
        raise BidstrainError("no word vector", path=path)
    if repeats:
        log.info(
            "%s: %d words repeat an earlier word (in another case or the same): the first "
            "vector of each is used",
            path,
            repeats,
        )
    return vectors


def mean_vectors(
    bins: Sequence[Sequence[str]], vectors: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, Counter]:
    """The mean vector of the known words of each TR (zeros without one).

    Returns
    -------
    features : ndarray, shape (n_bins, dim)
    unknown : Counter
        How often each word without a vector was spoken.
    """
    dim = next(iter(vectors.values())).size
    features, unknown = np.zeros((len(bins), dim)), Counter()
    for k, words in enumerate(bins):
        known = [vectors[word] for word in words if word in vectors]
        unknown.update(word for word in words if word not in vectors)
        if known:
            features[k] = np.mean(known, axis=0)
    return features, unknown
