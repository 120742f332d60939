"""The modalities bidstrain prepares and trains on, in the order every stage lists them."""

#: Image modalities, by their BIDS suffix.
MODALITIES = ("T1w", "bold", "dwi")
