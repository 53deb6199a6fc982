"""npe2 writers: a Labels layer as a TIFF, and a layer's per-cell ``features`` table as CSV."""

from __future__ import annotations

from typing import Any

from napari_hematology.core.errors import InputError
from napari_hematology.core.io import write_labels, write_table


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer as an integer TIFF."""
    return [str(write_labels(path, data))]


def write_features_csv(path: str, data: Any, meta: dict) -> list[str]:
    """Write a layer's ``features`` table (one row per cell) as CSV."""
    features = meta.get("features")
    if features is None or len(features) == 0:
        raise InputError(
            f"Layer {meta.get('name', '')!r} has no per-cell table to save; run blast detection first."
        )
    return [str(write_table(path, features))]
