"""What a person reads after ``analyze``: per-image overlay pictures and the ``report.html`` page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import CLASS_COLOURS, OTHER_COLOUR

OVERLAY_MAX_SIDE = 1024


def class_colours(classes: list[str]) -> dict[str, tuple[int, int, int]]:
    """RGB colour of each class (the same in the overlays and in napari)."""
    return {name: CLASS_COLOURS.get(name, OTHER_COLOUR) for name in classes}


def write_overlay(path: Path, image, labels, cells: pd.DataFrame) -> Path:
    """Write a PNG of the image (downsampled to at most 1024 pixels) with cell outlines coloured by class.

    Args:
        path: Destination PNG.
        image: The image (numpy or dask).
        labels: Its cell labels.
        cells: Cell table with ``cell_id`` and ``label``.

    Returns:
        The written path.

    """
    import imageio.v3 as iio
    from skimage.segmentation import find_boundaries

    from napari_hematology.core.io import to_rgb8

    step = max(1, int(np.ceil(max(image.shape[:2]) / OVERLAY_MAX_SIDE)))
    picture, _ = to_rgb8(np.asarray(image[::step, ::step]), path.stem)
    small = np.asarray(labels[::step, ::step])
    outlines = find_boundaries(small, mode="thick")
    colour_of = np.zeros((int(small.max()) + 1, 3), dtype=np.uint8)
    for cell in cells.itertuples():
        if int(cell.cell_id) < len(colour_of):
            colour_of[int(cell.cell_id)] = CLASS_COLOURS.get(str(cell.label), OTHER_COLOUR)
    picture = picture.copy()
    picture[outlines] = colour_of[small[outlines]]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, picture)
    return path


def write_report(path: Path, summary: dict[str, Any]) -> Path:
    """Write a self-contained HTML report: totals, one row and one overlay picture per image."""
    total = summary["total"]
    classes = list(total["counts"])

    def percent(value) -> str:
        return "n/a (no white cells)" if value is None else f"{value:.1f}%"

    legend = " ".join(
        f'<span style="color:rgb{CLASS_COLOURS.get(name, OTHER_COLOUR)}">&#9632; {html.escape(name)}</span>'
        for name in classes
    )
    header = "".join(f"<th>{html.escape(name)}</th>" for name in classes)
    rows = "".join(
        f"<tr><td>{html.escape(Path(item['image']).name)}</td><td>{item['cells']}</td>"
        + "".join(f"<td>{item['counts'].get(name, 0)}</td>" for name in classes)
        + f"<td>{percent(item['blast_percent'])}</td></tr>"
        for item in summary["images"]
    )
    pictures = "".join(
        f'<figure><img src="{html.escape(item["overlay"])}" style="max-width:100%">'
        f"<figcaption>{html.escape(Path(item['image']).name)}: {item['cells']} white cells, "
        f"blasts {percent(item['blast_percent'])}</figcaption></figure>"
        for item in summary["images"]
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blast detection report</title></head>
<body style="font-family:sans-serif">
<h1>Blast detection report</h1>
<p>{total["images"]} image(s), {total["cells"]} white cells, blasts {percent(total["blast_percent"])}
(blast-probability threshold {summary["blast_threshold"]}; model: {html.escape(summary["model"])}).
A blast percentage of 20% or more suggests acute leukaemia (WHO); confirm by review.</p>
<table border="1" cellpadding="4" style="border-collapse:collapse">
<tr><th>image</th><th>cells</th>{header}<th>blast %</th></tr>{rows}</table>
<p>Outline colours: {legend}</p>
{pictures}
</body></html>
"""
    path.write_text(page)
    return path
