"""A worker's batch as it travels to the main process (bidstrain.train.worker_batches):
the contiguous tensors of its ring (float32 samples, uint8 validity bits) by place, read
back from the main process's mapping of the ring; anything else by value."""

from __future__ import annotations

import pickle

import torch
from bidstrain.train.worker_batches import RingBatch, WorkerRings


def test_ring_tensors_travel_by_place_and_the_others_by_value():
    rings = WorkerRings(workers=2, slots=2, size=24)
    ring = rings.ring(1)
    ring.next()  # the first slot: the window lies in the second
    buffer = ring.next()
    window, offset = buffer.tensor(3, (4,))
    window = window.view(3, 4)
    assert offset == 0
    window.copy_(torch.arange(12, dtype=torch.float32).view(3, 4))
    bits = buffer.bits(2, 5)  # 10 bytes in the 3 float32 values after the window
    bits.copy_(torch.arange(250, 260, dtype=torch.uint8).view(2, 5))
    transposed = window.t()  # in the ring, but not contiguous
    features = torch.full((2,), 7.0)
    sent = {"bold": window, "valid:bold": bits, "turned": transposed, "video": features}
    batch = rings.batch(1, sent)
    assert set(batch.places) == {"bold", "valid:bold"}
    assert set(batch.arrays) == {"turned", "video"}
    travelled = pickle.loads(pickle.dumps(batch))
    assert isinstance(travelled, RingBatch)
    tensors = travelled.tensors()
    assert torch.equal(tensors["bold"], window) and torch.equal(tensors["turned"], transposed)
    assert tensors["valid:bold"].dtype == torch.uint8 and torch.equal(tensors["valid:bold"], bits)
    assert travelled.places["valid:bold"] == (4 * (24 + 12), (2, 5), torch.uint8)  # in bytes
    assert torch.equal(tensors["video"], features)
    # a view of the main process's ring, not a copy: a later write shows through
    block = rings.blocks[1]
    assert tensors["bold"].untyped_storage().data_ptr() == block.untyped_storage().data_ptr()
    assert travelled.places["bold"] == (24, (3, 4), torch.float32)
    window.fill_(-1.0)
    assert (tensors["bold"] == -1.0).all()
