"""What a person reads after ``analyze``: overlay pictures, a gallery of cells per class, ``report.html``."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from napari_hematology.core.cells.classes import BLAST, CLASS_COLOURS, OTHER_COLOUR

OVERLAY_MAX_SIDE = 1024
OUTLINE_WIDTH = 3  # overlay pixels; the report shows the overlay at about its own size
NAME_FONT_SIZE = 14
MIN_NAMED_SIDE = 24  # cells smaller than this in the overlay are outlined but not named
THUMBNAIL_SIDE = 112
THUMBNAIL_BACKGROUND = (255, 255, 255)
THUMBNAIL_QUALITY = 85


@dataclass(frozen=True)
class GalleryCell:
    """One cell shown in the report's gallery.

    Attributes:
        image: File name of its image.
        cell_id: Its label value in ``<stem>_labels.tif``.
        probability: The classifier's probability of the cell's class.
        blast_probability: The cell's blast probability.
        thumbnail: The whole cell with a margin, as an inline JPEG ``data:`` URI.

    """

    image: str
    cell_id: int
    probability: float
    blast_probability: float
    thumbnail: str


def class_colours(classes: list[str]) -> dict[str, tuple[int, int, int]]:
    """RGB colour of each class (the same in the overlays and in napari)."""
    return {name: CLASS_COLOURS.get(name, OTHER_COLOUR) for name in classes}


def thumbnail_uri(crop: np.ndarray, side: int = THUMBNAIL_SIDE) -> str:
    """Scale an RGB uint8 crop into a ``side`` x ``side`` square (aspect kept) and return it as a JPEG URI."""
    square = ImageOps.pad(Image.fromarray(crop), (side, side), color=THUMBNAIL_BACKGROUND)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def describe_blasts(part: dict[str, Any]) -> str:
    """One line on the blast percentage of a summary part (an image or the total) and its 95% interval."""
    cells = part["cells"]
    if not cells:
        return "blasts n/a (no white cells)"
    low, high = part["blast_ci95_percent"]
    noun = "white cell" if cells == 1 else "white cells"
    return f"blasts {part['blast_percent']:.1f}% of {cells} {noun}, 95% CI {low:.1f}-{high:.1f}%"


def describe_counts(part: dict[str, Any]) -> str:
    """The white cells of a summary part and its classes that were found, e.g. ``3 white cells (blast 3)``.

    Erythroblasts and ``other`` appear among the classes but not in the white-cell count; cells that the
    front-end check flagged are named with their reasons.
    """
    cells = part["cells"]
    found = ", ".join(f"{name} {count}" for name, count in part["counts"].items() if count)
    left_out = part.get("left_out") or {}
    flagged = "; ".join(f"{reason}: {count}" for reason, count in left_out.items())
    return (
        f"{cells} white cell{'' if cells == 1 else 's'}"
        + (f" ({found})" if found else "")
        + (f"; {sum(left_out.values())} left out of the differential ({flagged})" if left_out else "")
    )


def write_overlay(path: Path, image, labels, cells: pd.DataFrame) -> Path:
    """Write a PNG of the image (downsampled to at most 1024 pixels) with cells outlined and named by class.

    Outlines are ``OUTLINE_WIDTH`` pixels wide; cells at least ``MIN_NAMED_SIDE`` pixels wide in the
    picture also get their class name.

    Args:
        path: Destination PNG.
        image: The image (numpy or dask).
        labels: Its cell labels.
        cells: Cell table with ``cell_id``, ``label`` and bounding-box columns.

    Returns:
        The written path.

    """
    import imageio.v3 as iio

    from napari_hematology.core.io import to_rgb8

    step = max(1, int(np.ceil(max(image.shape[:2]) / OVERLAY_MAX_SIDE)))
    picture, _ = to_rgb8(np.asarray(image[::step, ::step]), path.stem)
    small = np.asarray(labels[::step, ::step])
    colour_of = np.zeros((int(small.max()) + 1, 3), dtype=np.uint8)
    for cell in cells.itertuples():
        if int(cell.cell_id) < len(colour_of):
            colour_of[int(cell.cell_id)] = CLASS_COLOURS.get(str(cell.label), OTHER_COLOUR)
    band = _outline_band(small)
    picture = picture.copy()
    picture[band > 0] = colour_of[band[band > 0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, _name_cells(picture, cells, step))
    return path


def _outline_band(labels: np.ndarray) -> np.ndarray:
    """Label values on an ``OUTLINE_WIDTH``-pixel band centred on each cell's border, 0 elsewhere."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    edges = np.where(find_boundaries(labels, mode="inner"), labels, 0)
    return ndimage.grey_dilation(edges, size=(OUTLINE_WIDTH, OUTLINE_WIDTH))


def _name_cells(picture: np.ndarray, cells: pd.DataFrame, step: int) -> np.ndarray:
    """Write each large enough cell's class name above its box, in its class colour with a halo."""
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=NAME_FONT_SIZE)
    for cell in cells.itertuples():
        if max(cell.bbox_y1 - cell.bbox_y0, cell.bbox_x1 - cell.bbox_x0) / step < MIN_NAMED_SIDE:
            continue
        colour = CLASS_COLOURS.get(str(cell.label), OTHER_COLOUR)
        position = (cell.bbox_x0 / step, max(0.0, cell.bbox_y0 / step - NAME_FONT_SIZE - 4))
        halo = _halo(colour)
        draw.text(position, str(cell.label), fill=colour, font=font, stroke_width=2, stroke_fill=halo)
    return np.asarray(canvas)


def _halo(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black around light colours, white around dark ones."""
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luminance > 100 else (255, 255, 255)


def write_report(path: Path, summary: dict[str, Any], gallery: dict[str, list[GalleryCell]]) -> Path:
    """Write the HTML report: totals with their uncertainty, warnings, a gallery per class, images.

    The gallery thumbnails are inline, so the page needs only the overlay PNGs next to it.

    Args:
        path: Destination ``report.html``.
        summary: The summary written to ``summary.json``.
        gallery: Cells to show per class, in the order shown.

    Returns:
        The written path.

    """
    total = summary["total"]
    classes = list(total["counts"])
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blast detection report</title>
<style>{_STYLE}</style></head>
<body>
<h1>Blast detection report</h1>
<p>{total["images"]} image(s): {html.escape(describe_blasts(total))}
(blast-probability threshold {summary["blast_threshold"]}; model: {html.escape(summary["model"])}).
A blast percentage of 20% or more suggests acute leukaemia (WHO); confirm by review.</p>
{_warnings(total["warnings"])}
<p>Colours: {_legend(classes)}</p>
<h2>Cells per class</h2>
<p>Each cell with a margin; its class probability and blast probability below. Within a class, the
cells with the highest blast probability come first.</p>
{"".join(_gallery_section(name, total["counts"].get(name, 0), gallery.get(name, [])) for name in classes)}
<h2>Images</h2>
{_image_table(summary["images"], classes)}
{"".join(_overlay_figure(item) for item in summary["images"])}
</body></html>
"""
    path.write_text(page)
    return path


_STYLE = """
body { font-family: sans-serif; max-width: 1100px; }
.warning { background: #fff3cd; border-left: 4px solid #e0a800; padding: 6px 10px; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
          border: 1px solid #666; margin: 0 4px 0 10px; }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; }
.gallery figure { margin: 0; width: 112px; font-size: 11px; }
.gallery img { width: 112px; height: 112px; border: 3px solid; box-sizing: border-box; }
table { border-collapse: collapse; } td, th { border: 1px solid #999; padding: 3px 6px; }
"""


def _css_colour(name: str) -> str:
    return f"rgb{CLASS_COLOURS.get(name, OTHER_COLOUR)}"


def _legend(classes: list[str]) -> str:
    return "".join(
        f'<span class="swatch" style="background:{_css_colour(name)}"></span>{html.escape(name)}'
        for name in classes
    )


def _warnings(warnings: list[str]) -> str:
    return "".join(f'<p class="warning">&#9888; {html.escape(text)}</p>' for text in warnings)


def _gallery_section(name: str, count: int, cells: list[GalleryCell]) -> str:
    shown = f"all {count}" if len(cells) == count else f"{len(cells)} of {count}"
    heading = f"<h3>{html.escape(name)}: {count} cell{'' if count == 1 else 's'}"
    if not count:
        return heading + "</h3>"
    figures = "".join(_gallery_figure(name, cell) for cell in cells)
    return f'{heading} (showing {shown})</h3><div class="gallery">{figures}</div>'


def _gallery_figure(name: str, cell: GalleryCell) -> str:
    probabilities = "no cell seen" if np.isnan(cell.probability) else f"p {cell.probability:.2f}"
    if name != BLAST and not np.isnan(cell.blast_probability):
        probabilities += f", blast {cell.blast_probability:.2f}"
    return (
        f'<figure><img src="{cell.thumbnail}" style="border-color:{_css_colour(name)}" '
        f'alt="{html.escape(name)} cell {cell.cell_id}"><figcaption>{probabilities}<br>'
        f"{html.escape(cell.image)} #{cell.cell_id}</figcaption></figure>"
    )


def _image_table(images: list[dict[str, Any]], classes: list[str]) -> str:
    columns = "".join(f"<th>{html.escape(name)}</th>" for name in classes)
    rows = "".join(
        f"<tr><td>{html.escape(Path(item['image']).name)}</td><td>{item['cells']}</td>"
        + "".join(f"<td>{item['counts'].get(name, 0)}</td>" for name in classes)
        + f"<td>{html.escape(describe_blasts(item))}</td>"
        + f"<td>{'<br>'.join(html.escape(text) for text in item['warnings'])}</td></tr>"
        for item in images
    )
    header = f"<tr><th>image</th><th>cells</th>{columns}<th>blasts</th><th>warnings</th></tr>"
    return f"<table>{header}{rows}</table>"


def _overlay_figure(item: dict[str, Any]) -> str:
    return (
        f'<figure><img src="{html.escape(item["overlay"])}" style="max-width:100%">'
        f"<figcaption>{html.escape(Path(item['image']).name)}: "
        f"{html.escape(describe_blasts(item))}</figcaption></figure>"
    )
