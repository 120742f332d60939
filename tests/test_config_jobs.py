"""The jobs' settings files: each job refuses settings that do not hold exactly its keys,
naming the job, the keys it wants and those it got (and the file, where it reads one)."""

from __future__ import annotations

import json
import re

import pytest
from bidstrain.config import ChecksJobConfig, EmbedJobConfig, EncodingJobConfig, NormalizeJobConfig
from bidstrain.errors import BidstrainError


@pytest.mark.parametrize(
    ("job", "what", "keys"),
    [
        (NormalizeJobConfig, "normalize", ["atlas", "bids_dir", "ingest", "normalize", "time"]),
        (ChecksJobConfig, "checks", ["checks", "ddof", "train", "world_size"]),
        (EmbedJobConfig, "embed", ["embed", "max_scale_ratio", "seed"]),
    ],
)
def test_settings_with_other_keys_are_refused_naming_both(job, what, keys):
    wanted = f"the {what} settings must hold exactly {keys}, got "
    with pytest.raises(BidstrainError, match=re.escape(wanted + "['extra', 'seed']")):
        job.from_dict({"seed": 1, "extra": 2})
    with pytest.raises(BidstrainError, match=re.escape(wanted + "list")):
        job.from_dict([])


def test_encoding_settings_with_other_keys_name_the_file(tmp_path):
    path = tmp_path / "encoding.json"
    path.write_text(json.dumps({"encoding": {}}))
    with pytest.raises(BidstrainError) as error:
        EncodingJobConfig.read(path)
    assert str(error.value) == (
        f"{path}: the encoding settings must hold exactly ['encoding', 'seed'], got ['encoding']"
    )
