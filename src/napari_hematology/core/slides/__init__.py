"""Slide-level classification: bags of cell features and the attention multiple-instance model."""
