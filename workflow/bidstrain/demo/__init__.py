"""Deterministic demo datasets (raw BIDS, fMRIPrep, QSIPrep) with a known answer; not a
stage of the workflow (``bidstrain-demo``)."""
