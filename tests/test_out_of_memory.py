"""An allocation that fails while the model runs ends the job with a message that names
the longest encoder sequence, the batch and the settings that shrink them."""

from __future__ import annotations

import re

import pytest
import torch
from bidstrain.errors import BidstrainError
from bidstrain.train.loop import train
from bidstrain.train.model import MultiModalAutoencoder
from bidstrain.train.out_of_memory import is_out_of_memory, out_of_memory_explained
from train_support import tiny_stores, train_config

#: torch's CPU allocator, word for word (torch 2.13, a 45 GB attention matrix).
CPU_MESSAGE = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
    "memory: you tried to allocate 45420134400 bytes. Error code 12 (Cannot allocate memory)"
)


def stimulus_model() -> MultiModalAutoencoder:
    config = train_config(window=4, patch_frames=2, patch_features=8, stimuli=["video"]).model
    return MultiModalAutoencoder(config, ["bold", "T1w"], stimuli={"video": 96})


def test_an_allocation_failure_names_the_sequence_the_batch_and_the_settings():
    # BOLD: 8^3 voxels in 4^3 patches, 4 frames in tokens of 2: 8 x 2 = 16 tokens; video:
    # 96 features in 12 tokens of 8, x 2 = 24 tokens, in BOLD's sequence; T1w: 8 alone
    with pytest.raises(BidstrainError) as error:
        with out_of_memory_explained(stimulus_model(), 4, "train.batch_size", "train"):
            raise RuntimeError(CPU_MESSAGE)
    message = str(error.value)
    assert message.startswith(f"out of memory ({CPU_MESSAGE}). ")
    assert "longest encoder sequence is 40 tokens (bold 16, video 24), read 4 samples" in message
    for setting in (
        "train.patch_size",
        "train.patch_features",
        "stimuli.video_size",
        "lower train.batch_size (a larger train.grad_accum_steps",
        "resources.train.mem_mb",
    ):
        assert setting in message


def test_a_gpu_allocation_failure_in_embed_names_its_own_settings():
    gpu_message = "CUDA out of memory. Tried to allocate 42.00 GiB.\nSee PYTORCH_CUDA_ALLOC_CONF"
    with pytest.raises(BidstrainError) as error:
        with out_of_memory_explained(stimulus_model(), 16, "embed.batch_size", "embed_images"):
            raise torch.OutOfMemoryError(gpu_message)
    message = str(error.value)
    assert message.startswith("out of memory (CUDA out of memory. Tried to allocate 42.00 GiB. See")
    assert "lower embed.batch_size, or" in message and "grad_accum" not in message
    assert "resources.embed_images.mem_mb" in message


def test_other_errors_pass_unchanged():
    failure = RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    with pytest.raises(RuntimeError) as error:
        with out_of_memory_explained(stimulus_model(), 4, "train.batch_size", "train"):
            raise failure
    assert error.value is failure
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))  # not torch's


@pytest.mark.integration
def test_training_that_runs_out_of_memory_ends_with_the_explanation(tmp_path, monkeypatch):
    stores = tiny_stores(tmp_path / "stores", {"bold": 4})

    def no_memory(self, *args, **kwargs):
        raise RuntimeError(CPU_MESSAGE)

    monkeypatch.setattr(MultiModalAutoencoder, "forward", no_memory)
    out = tmp_path / "out"
    with pytest.raises(BidstrainError) as error:
        train(
            train_config(),
            stores,
            {},
            model_out=out / "model.pt",
            metrics_out=out / "metrics.jsonl",
            checkpoint_dir=out / "checkpoints",
        )
    # BOLD: 8^3 voxels in 4^3 patches, one frame: 8 tokens; no stimulus kind
    assert re.search(r"sequence is 8 tokens \(bold 8\), read 2 samples at a time", str(error.value))
    assert "stimuli." not in str(error.value)
    assert not (out / "model.pt").exists()
