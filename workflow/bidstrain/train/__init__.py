"""Multi-modal training: schedule, losses, data, model and the training loop.

Modules: :mod:`.schedule` (learning-rate plan, shared with the checks stage),
:mod:`.losses` (normalized reconstruction losses), :mod:`.data` (stores to batches),
:mod:`.model` (per-modality embeddings and heads around a shared encoder),
:mod:`.step` (one optimizer step), :mod:`.loop` (the training loop), :mod:`.state`
(where training stands), :mod:`.checkpoint`, :mod:`.metrics` (``metrics.jsonl`` and the
progress line), :mod:`.distributed` (process group and collectives), :mod:`.lock` (one
trainer per experiment), :mod:`.stop` (signals and the test stop hooks), and the CLI in
:mod:`.__main__`.
"""
