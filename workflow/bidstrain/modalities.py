"""The modalities bidstrain prepares and trains on, in the order every stage lists them."""

#: Image modalities, by their BIDS suffix.
MODALITIES = ("T1w", "bold", "dwi")
#: Stimulus modalities: the kinds of per-TR features of the stimuli BOLD runs presented
#: (:mod:`bidstrain.stimuli`), in the order every stage lists them.
STIMULUS_KINDS = ("video", "audio", "text")
#: Everything the model may take, image modalities first: the order of per-modality logs.
MODEL_INPUTS = (*MODALITIES, *STIMULUS_KINDS)
