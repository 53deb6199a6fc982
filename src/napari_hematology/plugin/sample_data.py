"""npe2 sample data: bundled BCCD smear fields and single-cell crops (MIT)."""

from __future__ import annotations

from napari_hematology.core.cells.samples import sample_cells, sample_fields
from napari_hematology.core.io import read_image


def smear_field() -> list[tuple]:
    """One 640x480 peripheral blood smear field (BCCD)."""
    path = sample_fields()[0]
    return [(read_image(path).data, {"name": path.stem, "rgb": True}, "image")]


def single_cells() -> list[tuple]:
    """Five single white-cell crops, one per type (BCCD)."""
    return [
        (read_image(path).data, {"name": path.stem, "rgb": True}, "image") for path in sample_cells()
    ]
