"""The trained model applied to normalized images (``python -m bidstrain.embed``)."""
