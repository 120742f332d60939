"""Cross-subject averaging of BOLD stores (``python -m bidstrain.average``)."""
