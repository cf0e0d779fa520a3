"""Adapters at the edge of the ranking service: the feature store and the model registry."""
