"""npe2 sample data: bundled BCCD smear fields and single-cell crops (MIT)."""

from __future__ import annotations

import math

import numpy as np

from napari_hematology.core.cells.samples import sample_cells, sample_fields
from napari_hematology.core.io import read_image

GRID_GAP = 8
NAME_BAND = 28  # white space above each crop for its name
GRID_BACKGROUND = 255
SAMPLE_GAP = 40  # pixels between the smear field and the single cells when both samples are open


def smear_field() -> list[tuple]:
    """One 640x480 peripheral blood smear field (BCCD)."""
    path = sample_fields()[0]
    return [(read_image(path).data, {"name": path.stem, "rgb": True}, "image")]


def single_cells() -> list[tuple]:
    """Five single white-cell crops, one per type (BCCD), side by side in one image, each framed and named.

    The grid lies to the right of the smear-field sample, so both samples can be open together. The crops
    keep their own pixel size, so their relative cell sizes stay true. A Shapes layer frames
    each crop; its features hold the cell type and the source file, and its text shows the type.
    """
    paths = sample_cells()
    crops = [np.asarray(read_image(path).data)[..., :3] for path in paths]
    grid, boxes = tile_crops(crops)
    # beside the smear field, not on it: both samples can be open at once
    beside_field = (0.0, float(_field_width() + SAMPLE_GAP))
    features = {
        "cell_type": [path.stem.split("_")[0] for path in paths],
        "file": [path.name for path in paths],
    }
    frames = {
        "name": "cell types",
        "shape_type": "rectangle",
        "features": features,
        "text": {"string": "{cell_type}", "anchor": "upper_left", "size": 12, "color": "black"},
        "edge_color": "black",
        "edge_width": 2,
        "face_color": "transparent",
        "translate": beside_field,
    }
    image = {"name": "single cells", "rgb": True, "translate": beside_field}
    return [(grid, image, "image"), (boxes, frames, "shapes")]


def _field_width() -> int:
    """Width of the smear-field sample in pixels (read from the file's header only)."""
    from PIL import Image

    with Image.open(sample_fields()[0]) as field:
        return field.width


def tile_crops(crops: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Tile RGB crops on a white grid of equal cells, as square as the count allows, with room for names.

    Args:
        crops: (Y, X, 3) uint8 crops of any sizes.

    Returns:
        The grid image and, per crop, the corners ``[[y0, x0], [y1, x1]]`` of the box it occupies.

    """
    side = max(max(crop.shape[:2]) for crop in crops) + GRID_GAP
    columns = math.ceil(math.sqrt(len(crops)))
    rows = math.ceil(len(crops) / columns)
    grid = np.full((rows * (side + NAME_BAND), columns * side, 3), GRID_BACKGROUND, dtype=np.uint8)
    boxes = []
    for index, crop in enumerate(crops):
        y0 = (index // columns) * (side + NAME_BAND) + NAME_BAND
        x0 = (index % columns) * side + GRID_GAP // 2
        height, width = crop.shape[:2]
        grid[y0 : y0 + height, x0 : x0 + width] = crop
        boxes.append(np.array([[y0, x0], [y0 + height, x0 + width]], dtype=float))
    return grid, boxes
