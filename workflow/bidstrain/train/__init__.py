"""Multi-modal training: schedule, losses, data, model and the training loop.

Modules:

- :mod:`.__main__`: the command line of the trainer (``python -m bidstrain.train``).
- :mod:`.launch`: starts the trainer as the job needs it (one process, torchrun, or one
  torchrun per node through srun).
- :mod:`.loop`: the training loop, read top to bottom.
- :mod:`.step`: one optimizer step over an accumulation group, reduced over ranks.
- :mod:`.state`: where training stands (the counters a checkpoint saves).
- :mod:`.checkpoint`: checkpoints written atomically, resumed only by the same run.
- :mod:`.stop`: SIGTERM/SIGUSR1 at a step boundary, and the test stop hooks.
- :mod:`.lock`: one trainer per experiment (a kernel lock on the checkpoint directory).
- :mod:`.distributed`: process group, device and collectives.
- :mod:`.schedule`: the learning-rate plan, shared with the checks stage.
- :mod:`.losses`: normalized reconstruction losses.
- :mod:`.model`: per-modality patch embeddings and heads around a shared encoder (BOLD
  and its stimulus tokens in one sequence).
- :mod:`.encoder`: the shared transformer encoder (activation checkpointing, compilation).
- :mod:`.out_of_memory`: an allocation that fails while the model runs, told as the
  sequence, the batch and the settings that shrink them (the trainer and ``embed``).
- :mod:`.tokens`: the tokens of each input (3D patches, tubelets of BOLD windows, parcel
  and stimulus series) and the heads that fold them back.
- :mod:`.data`: from stores to batches (sample counts, the dataset, the loader).
- :mod:`.windows`: BOLD windows (counts, per-epoch offsets) and the time shuffle.
- :mod:`.stimulus_windows`: the aligned stimulus features that come with BOLD windows.
- :mod:`.sampler`: the order of an epoch's samples, a few stores and chunks at a time.
- :mod:`.reader`: a bounded set of open stores in a loader process.
- :mod:`.scatter`: a float32 volume read from the shard straight onto the model's grid.
- :mod:`.resample`: from a store's masked voxels to the model's grid (block mean, crop, pad).
- :mod:`.buffers`: the ring of reused batch buffers the loader writes into.
- :mod:`.worker_batches`: a worker's batch passed as its place in a ring the main
  process shares.
- :mod:`.ring_size`: buffers per loader process and their bytes (torch-free: the plan
  checks them against the training job's memory).
- :mod:`.metrics`: ``metrics.jsonl`` and the progress line of the job log.
- :mod:`.tracking`: TensorBoard and W&B, fed the records of ``metrics.jsonl``.
- :mod:`.description`: ``model.json`` and :func:`load_model`.
- :mod:`.expectation`: what a configuration expects of a trained model (no torch).
"""


def load_model(path, config=None, *, device="cpu"):
    """A trained model for inference and its description: see
    :func:`bidstrain.train.description.load_model` (imported on call: torch is heavy)."""
    from bidstrain.train.description import load_model as load

    return load(path, config, device=device)
