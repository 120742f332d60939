"""Multi-modal training: schedule, losses, data, model and the training loop.

Modules: :mod:`.schedule` (learning-rate plan, shared with the checks stage),
:mod:`.losses` (normalized reconstruction losses), :mod:`.data` (stores to batches),
:mod:`.model` (per-modality embeddings and heads around a shared encoder),
:mod:`.loop` (the training loop), and the CLI in :mod:`.__main__`.
"""
