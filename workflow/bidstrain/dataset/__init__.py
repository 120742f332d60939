"""The dataset layer: the BIDS index (:mod:`~bidstrain.dataset.bids`), derivatives such as
fMRIPrep and QSIPrep outputs (:mod:`~bidstrain.dataset.derivatives`) and the mask options
that name files in them (:mod:`~bidstrain.dataset.masks`)."""
