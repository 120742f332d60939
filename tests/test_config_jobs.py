"""The jobs' settings files: each job refuses settings that do not hold exactly its keys,
naming the job, the keys it wants and those it got (and the file, where it reads one)."""

from __future__ import annotations

import json
import re

import pytest
from bidstrain.config import (
    ChecksJobConfig,
    EmbedJobConfig,
    EncodingJobConfig,
    NormalizeJobConfig,
    setting_changes,
)
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


def test_setting_changes_names_each_difference_and_tells_long_lists_by_entry():
    """Scalars and short lists as ``old -> new``; a long list by the entries added and
    removed; a list of store entries store by store (a subject's normalize spec)."""
    old = {"lr": 0.001, "loss": {"normalize": "var"}, "heldout": {"run": ["2"]}, "gone": 1}
    new = {"lr": 0.002, "loss": {"normalize": "std"}, "heldout": {"run": ["1", "2"]}}
    assert setting_changes(old, new) == [
        "gone 1 -> (absent)",
        'heldout.run ["2"] -> ["1", "2"]',
        "loss.normalize var -> std",
        "lr 0.001 -> 0.002",
    ]
    stores = [f"results/normalized/sub-{i:02d}/anat/sub-{i:02d}_T1w.zarr" for i in range(6)]
    assert setting_changes({"T1w": stores[:5]}, {"T1w": stores[1:]}) == [
        f"T1w: 1 added ({stores[5]})",
        f"T1w: 1 removed ({stores[0]})",
    ]
    assert setting_changes(stores[:5], stores[4:0:-1] + stores[:1]) == [
        "the same entries in another order"
    ]
    assert setting_changes(stores, stores + stores[:1]) == ["the same entries repeated otherwise"]
    more = setting_changes({"T1w": []}, {"T1w": stores})
    assert more == [f"T1w: 6 added ({', '.join(stores[:3])} and 3 more)"]
    spec = [{"store": s, "mask": "epi", "stats_from": []} for s in stores[:2]]
    changed = [{**spec[1], "mask": "auto"}, {"store": stores[2], "mask": "epi"}]
    assert setting_changes(spec, changed) == [
        f"[{stores[1]}].mask epi -> auto",
        f"1 added ({stores[2]})",
        f"1 removed ({stores[0]})",
    ]
    assert setting_changes(spec, spec) == []
    # the order of a spec's entries is told only when nothing else changed
    assert setting_changes(spec, spec[::-1]) == ["the same entries in another order"]
    held = [spec[1], {**spec[0], "stats_from": [stores[1]]}]
    assert setting_changes(spec, held) == [f'[{stores[0]}].stats_from [] -> ["{stores[1]}"]']
