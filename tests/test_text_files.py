"""Tab-separated tables as BIDS writes them: no quoting, one field per tab, every row as
long as the header."""

from __future__ import annotations

import pytest
from bidstrain.dataset.atlas import read_label_table
from bidstrain.errors import BidstrainError
from bidstrain.io.text_files import read_tsv
from bidstrain.stimuli.text import read_word_table


def test_a_quote_is_part_of_its_field_and_joins_no_lines(tmp_path):
    path = tmp_path / "transcript.tsv"
    path.write_text('onset\tword\n0.5\t"a\n2.5\tbig\n4.5\tfilm"\n6.5\t""\n')
    columns, rows = read_tsv(path)
    assert columns == ("onset", "word")
    assert [row["word"] for row in rows] == ['"a', "big", 'film"', '""']
    # one word per row, at its own onset (the quotes are punctuation to the words)
    words = read_word_table(path)
    assert [(w.onset, w.text) for w in words] == [(0.5, "a"), (2.5, "big"), (4.5, "film")]


def test_atlas_labels_with_a_quote_keep_every_row(tmp_path):
    path = tmp_path / "atlas_dseg.tsv"
    path.write_text('index\tname\n1\tleft "A"\n2\t"right\n3\tnext\n')
    indices, names = read_label_table(path)
    assert indices.tolist() == [1, 2, 3]
    assert names == ('left "A"', '"right', "next")


def test_a_row_of_another_length_than_the_header_names_its_line(tmp_path):
    path = tmp_path / "sub-01_task-movie_events.tsv"
    path.write_text("onset\tduration\ttrial_type\tstim_file\n0\t20\tfilm\n")
    with pytest.raises(
        BidstrainError, match=r"line 2: 3 tab-separated fields where the header has 4"
    ) as error:
        read_tsv(path, subject="01")
    assert error.value.path == str(path) and error.value.subject == "01"
    path.write_text("onset\tduration\n0\t20\tfilm.mp4\n")
    with pytest.raises(BidstrainError, match="line 2: 3 tab-separated fields"):
        read_tsv(path)


def test_empty_fields_after_the_last_column_are_no_data_lost(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("onset\tduration\tstim_file\n0\t20\tfilm.mp4\t\t\n")
    assert read_tsv(path)[1] == [{"onset": "0", "duration": "20", "stim_file": "film.mp4"}]
    path.write_text("onset\tduration\n0\t20\t\tfilm.mp4\n")  # a field past the header
    with pytest.raises(BidstrainError, match="line 2: 4 tab-separated fields"):
        read_tsv(path)


def test_a_repeated_column_is_refused(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("onset\tduration\tonset\n0\t20\t5\n")
    with pytest.raises(BidstrainError, match="the header repeats column 'onset'"):
        read_tsv(path)


def test_lenient_tables_fill_short_rows_and_keep_the_last_repeated_column(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\tage\nsub-01\n\nsub-02\t30\t31\textra\n")
    columns, rows = read_tsv(path, lenient=True)
    assert columns == ("participant_id", "age", "age")
    assert rows == [
        {"participant_id": "sub-01", "age": None},
        {"participant_id": "sub-02", "age": "31"},
    ]
