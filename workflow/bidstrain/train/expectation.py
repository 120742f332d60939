"""What a configuration expects of a trained model, and how a model's description
(``model.json``, :mod:`.description`) differs from it.

Light (no torch): the plan writes the expectation into the embed job's file at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bidstrain.config import Config, ModelExpectation
from bidstrain.dataset.masks import is_pattern
from bidstrain.modalities import MODALITIES


def expectation(config: Config) -> ModelExpectation:
    """What ``config`` expects of a model (see :func:`differences`): the ``train`` keys
    that determine the weights, the modalities, and the normalization."""
    normalize = config.normalize
    return ModelExpectation(
        train=config.train.hashed(),
        modalities=tuple(config.modalities),
        ddof=normalize.ddof,
        mask={m: normalize.mask_option(m) for m in MODALITIES},
        confounds_strategy=normalize.confounds.strategy,
    )


def differences(description: Mapping[str, Any], expected: ModelExpectation) -> list[str]:
    """How a model's description disagrees with a configuration's :func:`expectation`:
    one line per difference.

    Compared: every ``train`` key that determines the weights, the trained modalities,
    and per modality the normalization's ``ddof``, mask keyword (a path pattern is not
    compared) and, for BOLD, the confound strategy.
    """
    lines = []
    current = expected.train
    for key, value in description["train"].items():
        if key in current and current[key] != value:
            lines.append(f"train.{key}: {value!r} in the model, {current[key]!r} in the config")
    missing = sorted(set(description["modalities"]) - set(expected.modalities))
    if missing:
        lines.append(f"modalities: the model was trained on {missing}, the config has not")
    for modality, norm in description["normalization"].items():
        if norm["ddof"] != expected.ddof:
            lines.append(
                f"normalize.ddof: {norm['ddof']} for the model's {modality}, "
                f"{expected.ddof} in the config"
            )
        option = expected.mask[modality]
        if not is_pattern(option) and not norm["average"] and norm["mask"] != [option]:
            lines.append(
                f"mask of {modality}: {norm['mask']} in the model, {option!r} in the config"
            )
        strategy = expected.confounds_strategy
        if modality == "bold" and norm["confounds_strategy"] != strategy:
            lines.append(
                f"normalize.confounds.strategy: {norm['confounds_strategy']!r} in the model, "
                f"{strategy!r} in the config"
            )
    return lines
