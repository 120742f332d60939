"""The encoding job on 2 CPU ranks (gloo): each rank its share of the time points, the
gradients summed, so it trains the weights of 1 rank (to float rounding); stopped after
a step and resumed, it ends bit for bit where the uninterrupted 2-rank run ends."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bidstrain.encoding.data import EncodingData, save_data
from bidstrain.train.stop import EXIT_INTERRUPTED, STOP_AT_STEP
from ddp_support import launch_ranks

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two DDP ranks, trained twice


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoding_ddp")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(61, 6)).astype(np.float32)  # an odd count: unequal shares
    y = (x @ rng.normal(size=(6, 4)) + rng.normal(size=(61, 4))).astype(np.float32)
    features = dict.fromkeys(
        ("kinds", "sizes", "delays", "method", "repetition_time", "statistics")
    )
    save_data(
        EncodingData(x[:41], y[:41], x[41:], y[41:], features, {"kind": "voxels"}),
        folder / "data.npz",
    )
    settings = {"encoding": {"epochs": 40, "checkpoint_every": 10, "alpha": 2.0}, "seed": 4}
    (folder / "settings.json").write_text(json.dumps(settings))
    return folder


def _run(inputs, out, world_size, **env):
    args = ["-m", "bidstrain.encoding", "--settings", str(inputs / "settings.json")]
    args += ["--data", str(inputs / "data.npz"), "--world-size", str(world_size)]
    args += ["--out-dir", str(out)]
    return launch_ranks(args, world_size, **env)


def _weights(out):
    return torch.load(out / "model.pt", weights_only=False)["state"]


def test_two_ranks_train_the_one_rank_weights_and_resume_exactly(inputs, tmp_path):
    codes, outputs = _run(inputs, tmp_path / "one", 1)
    assert codes == [0], outputs
    codes, outputs = _run(inputs, tmp_path / "two", 2)
    assert codes == [0, 0], outputs
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    torch.testing.assert_close(two["weight"], one["weight"], rtol=0, atol=1e-5)
    codes, outputs = _run(inputs, tmp_path / "stopped", 2, **{STOP_AT_STEP: "17"})
    assert codes == [EXIT_INTERRUPTED] * 2, outputs
    assert not (tmp_path / "stopped" / "model.pt").exists()
    codes, outputs = _run(inputs, tmp_path / "stopped", 2)
    assert codes == [0, 0], outputs
    assert "resumed from" in outputs[0]
    resumed = _weights(tmp_path / "stopped")
    assert torch.equal(resumed["weight"], two["weight"])
    assert torch.equal(resumed["bias"], two["bias"])
