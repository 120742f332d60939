"""The encoding model: aligned stimulus features (delays included) -> BOLD of the
cross-subject average, trained like the workflow trains (DDP over time points,
checkpoints, exact resume), validated on held-out runs beside the mean prediction and
scikit-learn's RidgeCV, and applied to the features of a new run.

Modules: :mod:`~bidstrain.encoding.data` (the arrays and their descriptions),
:mod:`~bidstrain.encoding.fit` (training), :mod:`~bidstrain.encoding.evaluate` (held-out
metrics and baselines), :mod:`~bidstrain.encoding.outputs` (model, model.json, metrics),
:mod:`~bidstrain.encoding.apply` (predicted BOLD of a new run). The job is
``python -m bidstrain.encoding`` (docs/encoding.md).
"""
