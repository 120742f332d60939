"""Multi-modal training: schedule, losses, data, model and the training loop.

Modules: :mod:`.schedule` (learning-rate plan, shared with the checks stage),
:mod:`.losses` (normalized reconstruction losses), :mod:`.data` (stores to batches),
:mod:`.model` (per-modality embeddings and heads around a shared encoder),
:mod:`.step` (one optimizer step), :mod:`.loop` (the training loop), :mod:`.state`
(where training stands), :mod:`.checkpoint`, :mod:`.metrics` (``metrics.jsonl`` and the
progress line), :mod:`.distributed` (process group and collectives), :mod:`.lock` (one
trainer per experiment), :mod:`.stop` (signals and the test stop hooks),
:mod:`.tracking` (TensorBoard and W&B, fed the metric records), :mod:`.description`
(``model.json`` and :func:`load_model`), and the CLI in :mod:`.__main__`.
"""


def load_model(path, config=None, *, device="cpu"):
    """A trained model for inference and its description: see
    :func:`bidstrain.train.description.load_model` (imported on call: torch is heavy)."""
    from bidstrain.train.description import load_model as load

    return load(path, config, device=device)
