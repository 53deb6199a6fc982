"""A whole slide, tile by tile: segment, classify and count white cells with live results and resume.

The slide is cut into the overlapping tiles of :func:`~napari_hematology.core.cells.segmentation.tile_windows`
(a cell belongs to the tile whose core holds its centroid, so none is cut or counted twice). Only tiles
that touch the region to read are visited: the given polygons (the smear's reading area or regions drawn
in QuPath), or else every tile with stained cells on the overview. Tiles are visited row by row, turning
at the end of each row like a technologist's meander, so a fixed-size differential (100 or 200 white
cells) samples a contiguous track.

After each tile its cells are appended to ``<stem>_cells.csv`` and the tile is recorded in
``<stem>_checkpoint.json``; a cancelled or crashed run keeps what it found and ``resume=True`` continues
where it stopped. At the end ``<stem>_summary.json`` and ``<stem>_cells.geojson`` (QuPath detections) are
written.

:mod:`napari_hematology.core.whole_slide.worker` runs it in a process of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage

from napari_hematology.core.cells.analysis import (
    LazyClassifier,
    classify_cells,
    get_classifier,
    loaded_classifier,
    summarize,
)
from napari_hematology.core.cells.classes import DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.cells.crops import OK
from napari_hematology.core.cells.magnification import PixelSize, find_pixel_size
from napari_hematology.core.cells.segmentation import (
    Segmentation,
    SegmentationConfig,
    estimate_white,
    segment_field,
    stain_maps,
    tile_windows,
)
from napari_hematology.core.cells.stain import od_tables
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import SmearImage, read_ahead, read_image, to_rgb8
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, no_progress
from napari_hematology.core.whole_slide.geojson import cells_to_geojson, polygons_to_geojson, write_geojson
from napari_hematology.core.whole_slide.outputs import (  # noqa: F401 (has_checkpoint: part of this API)
    has_checkpoint,
    slide_outputs,
    slide_stem,
)
from napari_hematology.core.whole_slide.reading_area import find_reading_area, inside_polygons, slide_overview

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
SHIFTED_Y = ("centroid_y", "bbox_y0", "bbox_y1")
SHIFTED_X = ("centroid_x", "bbox_x0", "bbox_x1")


@dataclass
class WholeSlideConfig:
    """Settings of a whole-slide run.

    Attributes:
        segmentation: White-cell segmentation settings (tile size and overlap included).
        blast_threshold: Blast-probability threshold for the ``label`` column.
        max_white_cells: Stop after this many white cells (a 100- or 200-cell differential); None counts
            every cell of the region.
        pixel_size_um: The user's pixel size; None takes the file's, else the red-cell ruler's
            (see :func:`~napari_hematology.core.cells.magnification.find_pixel_size`).

    """

    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    blast_threshold: float = DEFAULT_BLAST_THRESHOLD
    max_white_cells: int | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if self.max_white_cells is not None and self.max_white_cells < 1:
            raise InputError("The number of white cells to sample must be at least 1.")


@dataclass
class TileUpdate:
    """What one finished tile adds, for live display.

    Attributes:
        cells: The tile's new cells (slide coordinates, classified).
        summary: Counts over every cell found so far (see :func:`~.analysis.summarize`).
        done: Tiles finished, this run and earlier ones.
        total: Tiles to visit.

    """

    cells: pd.DataFrame
    summary: dict[str, Any]
    done: int
    total: int


@dataclass
class SlideAnalysis:
    """The result of a whole-slide run.

    Attributes:
        cells: Every cell found, in slide coordinates, with ``tile``, ``label`` and class probabilities.
        classes: Class names of the classifier.
        summary: Counts, blast percentage and how the run went (also in ``<stem>_summary.json``).
        outputs: Paths written, by kind (``cells``, ``checkpoint``, ``summary``, ``geojson``).

    """

    cells: pd.DataFrame
    classes: list[str]
    summary: dict[str, Any]
    outputs: dict[str, Path]


def analyze_slide(
    image: SmearImage,
    out_dir: str | Path,
    classifier,
    *,
    regions: list[np.ndarray] | None = None,
    config: WholeSlideConfig | None = None,
    pixel_size: PixelSize | None = None,
    resume: bool = False,
    start_near: tuple[float, float] | None = None,
    on_found: Callable[[pd.DataFrame], None] | None = None,
    on_tile: Callable[[TileUpdate], None] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SlideAnalysis:
    """Find, classify and count the white cells of a whole slide, tile by tile.

    Args:
        image: The opened slide (lazy levels; see :func:`napari_hematology.core.io.read_image`).
        out_dir: Folder for the cell table, checkpoint, summary and GeoJSON.
        classifier: A loaded cell classifier, or a :class:`~napari_hematology.core.cells.analysis.
            LazyClassifier`: it then loads once the first tile with cells has been segmented.
        regions: Polygons (``(N, 2)`` arrays of ``(y, x)`` in full-resolution pixels) to read in, e.g. the
            reading area or QuPath annotations; None reads every tile with stained cells.
        config: Run settings.
        pixel_size: The slide's pixel size; None finds it (see :func:`slide_pixel_size`).
        resume: Continue an unfinished run of the same slide and settings found in ``out_dir``.
        start_near: ``(y, x)`` in full-resolution pixels, e.g. the centre of the view: the run starts with
            the nearest tile and goes on in meander order from there. A resumed run keeps its first start.
        on_found: Called with a tile's cells (slide coordinates, not classified yet) when they are found
            before the classifier has loaded, which it then does; ``on_tile`` brings them again,
            classified.
        on_tile: Called with each finished tile's cells and the running summary (from the worker thread).
        progress: Progress callback (tiles).
        should_stop: Cancellation callback; a cancelled run keeps its cells and checkpoint.

    Returns:
        Every cell, the class names, the summary and the written paths.

    Raises:
        InputError: The checkpoint belongs to other settings, or the slide cannot be analysed.
        Cancelled: ``should_stop`` asked to stop (what was found so far stays on disk).

    """
    config = config or WholeSlideConfig()
    pixel_size = pixel_size or slide_pixel_size(image, config)
    outputs = slide_outputs(out_dir, slide_stem(image.path))
    overview, factor = slide_overview(image)
    white = estimate_white(overview)
    shape = image.data.shape[:2]
    plan = _plan_tiles(shape, overview, white, factor, regions, config.segmentation, pixel_size)
    identity = _identity(image, config, regions, len(plan), pixel_size)
    done, cells, saved = _start(outputs, identity, resume)
    first = saved.get("start")
    header = {
        "identity": identity,
        "start": _nearest_tile(plan, start_near) if first is None else first,
        "resumed_after_tiles": saved.get("resumed_after_tiles", []) + ([len(done)] if saved else []),
    }
    plan = _starting_at(plan, header["start"])
    if len(cells) and on_tile is not None:
        on_tile(TileUpdate(cells, _summary(cells, _classes(classifier)), len(done), len(plan)))
    report = progress or no_progress
    to_do = [(index, window) for index, window in plan if index not in done]
    tiles = read_ahead(image.data, [(rows, cols) for _, (rows, cols, _, _) in to_do])
    for (index, window), tile in zip(to_do, tiles, strict=True):
        check_cancel(should_stop)
        report(len(done), len(plan), "reading tiles")
        new = _tile_cells(tile, window, white, classifier, regions, config, pixel_size.um_per_px, on_found)
        new = _number(new.assign(tile=index), len(cells), config.max_white_cells)
        if len(new):
            cells = pd.concat([cells, new], ignore_index=True) if len(cells) else new
        done.add(index)
        _save(outputs, header, done, new, complete=False)
        if on_tile is not None:
            on_tile(TileUpdate(new, _summary(cells, _classes(classifier)), len(done), len(plan)))
        if config.max_white_cells is not None and len(cells) >= config.max_white_cells:
            break
    report(len(plan), len(plan), "reading tiles")
    return _finish(image, outputs, header, done, cells, _classes(classifier), regions, pixel_size)


def _classes(classifier) -> list[str]:
    return list(loaded_classifier(classifier).classes)


def slide_pixel_size(image: SmearImage, config: WholeSlideConfig) -> PixelSize:
    """The slide's pixel size: the user's, else the file's, else measured on its red cells."""
    return find_pixel_size(
        image.data,
        name=image.path.name if image.path else "slide",
        user_um=config.pixel_size_um,
        metadata_um=image.pixel_size_um,
        metadata_source=image.pixel_size_source,
    )


def analyze_slide_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    classifier=None,
    regions: list[np.ndarray] | None = None,
    reading_area: bool = True,
    config: WholeSlideConfig | None = None,
    resume: bool = False,
    start_near: tuple[float, float] | None = None,
    on_regions: Callable[[list[np.ndarray]], None] | None = None,
    on_found: Callable[[pd.DataFrame], None] | None = None,
    on_tile: Callable[[TileUpdate], None] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SlideAnalysis:
    """Open a slide and analyse it where it should be read (see :func:`analyze_slide`).

    Args:
        path: Slide file of any format :func:`~napari_hematology.core.io.read_image` opens.
        out_dir: Output folder.
        model_dir: Classifier folder; None for the shipped weights.
        classifier: A loaded classifier (or a lazy one, see :func:`analyze_slide`) to use instead of
            loading ``model_dir``'s.
        regions: Polygons to read in (e.g. QuPath annotations); they take precedence over the reading area.
        reading_area: Without ``regions``, find the smear's reading area and read only there (written to
            ``<stem>_reading_area.geojson``); False reads every stained tile.
        config: Run settings.
        resume: Continue an unfinished run found in ``out_dir``.
        start_near: Where to start reading (see :func:`analyze_slide`).
        on_regions: Called with the polygons read in, once they are known.
        on_found: Called with cells found before the classifier has loaded (see :func:`analyze_slide`).
        on_tile: Called after each tile (see :func:`analyze_slide`).
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The run's cells, summary and outputs.

    """
    config = config or WholeSlideConfig()
    image = read_image(path)
    if classifier is None:
        classifier = get_classifier(model_dir)
    pixel_size = slide_pixel_size(image, config)
    if regions is None and reading_area:
        area = find_reading_area(
            image,
            segmentation=config.segmentation,
            pixel_size_um=pixel_size.um_per_px,
            should_stop=should_stop,
        )
        regions = area.polygons or None
        if regions:
            write_geojson(
                Path(out_dir) / f"{slide_stem(image.path)}_reading_area.geojson", polygons_to_geojson(regions)
            )
    if regions is not None and on_regions is not None:
        on_regions(regions)
    return analyze_slide(
        image,
        out_dir,
        classifier,
        regions=regions,
        config=config,
        pixel_size=pixel_size,
        resume=resume,
        start_near=start_near,
        on_found=on_found,
        on_tile=on_tile,
        progress=progress,
        should_stop=should_stop,
    )


def _summary(cells: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Counts of the cells so far; cells the front-end check flagged are left out (``left_out``)."""
    labels = cells["label"] if "label" in cells else pd.Series([], dtype=object)
    quality = cells.get("quality")
    return summarize(labels, classes, None if quality is None else quality.fillna(OK))


def _plan_tiles(
    shape, overview, white, factor, regions, segmentation: SegmentationConfig, pixel_size: PixelSize
) -> list[tuple[int, tuple]]:
    """The tiles to visit, numbered in raster order and listed in meander order.

    Tile size and overlap hold at the segmentation's scale, so they are converted to slide pixels.
    """
    where = _where_mask(overview, white, factor, regions, segmentation)
    zoom = segmentation.zoom(pixel_size.um_per_px)
    tile_size, overlap = round(segmentation.tile_size / zoom), round(segmentation.tile_overlap / zoom)
    windows = list(tile_windows(shape, tile_size, overlap))
    rows_of = sorted({window[2].start for window in windows})
    plan = []
    for index, window in enumerate(windows):
        core_rows, core_cols = window[2], window[3]
        part = where[
            int(core_rows.start / factor) : int(np.ceil(core_rows.stop / factor)),
            int(core_cols.start / factor) : int(np.ceil(core_cols.stop / factor)),
        ]
        if part.any():
            row = rows_of.index(core_rows.start)
            plan.append(((row, core_cols.start if row % 2 == 0 else -core_cols.start), index, window))
    return [(index, window) for _, index, window in sorted(plan, key=lambda item: item[0])]


def _nearest_tile(plan: list[tuple[int, tuple]], point: tuple[float, float] | None) -> int | None:
    """Number of the planned tile whose core centre is nearest ``point`` (the first tile without one)."""
    if not plan:
        return None
    if point is None:
        return plan[0][0]
    centres = np.array([[(w[2].start + w[2].stop) / 2, (w[3].start + w[3].stop) / 2] for _, w in plan])
    return plan[int(np.argmin(np.hypot(*(centres - np.asarray(point, dtype=float)).T)))][0]


def _starting_at(plan: list[tuple[int, tuple]], first: int | None) -> list[tuple[int, tuple]]:
    """The plan in the same order, rotated to begin with tile ``first``."""
    position = next((at for at, (index, _) in enumerate(plan) if index == first), 0)
    return plan[position:] + plan[:position]


def _where_mask(overview, white, factor, regions, segmentation: SegmentationConfig) -> np.ndarray:
    """Overview pixels to read: inside the regions (outlines included), or stained when there are none."""
    if regions is not None:
        canvas = Image.new("1", (overview.shape[1], overview.shape[0]))
        draw = ImageDraw.Draw(canvas)
        for region in regions:
            draw.polygon((np.asarray(region)[:, ::-1] / factor).ravel().tolist(), fill=1, outline=1)
        return np.asarray(canvas, dtype=bool)
    _, total = stain_maps(overview, od_tables(white))
    return ndimage.binary_dilation(total > segmentation.background_od, iterations=2)


def _identity(
    image: SmearImage, config: WholeSlideConfig, regions, tiles: int, pixel_size: PixelSize
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the slide, the settings and the regions."""
    digest = hashlib.sha1()
    for region in regions or []:
        digest.update(np.round(np.asarray(region, dtype=float), 1).tobytes())
    return {
        "version": CHECKPOINT_VERSION,
        "slide": image.path.name if image.path else None,
        "shape": list(image.data.shape),
        "config": asdict(config),
        "pixel_size_um": round(pixel_size.um_per_px, 6),
        "regions": digest.hexdigest() if regions is not None else None,
        "tiles": tiles,
    }


def _start(outputs: dict[str, Path], identity: dict, resume: bool) -> tuple[set[int], pd.DataFrame, dict]:
    """Tiles already done, their cells and the saved checkpoint (when resuming), or a clean start."""
    checkpoint, table = outputs["checkpoint"], outputs["cells"]
    if resume and checkpoint.is_file():
        saved = json.loads(checkpoint.read_text())
        if saved.get("identity") != identity:
            raise InputError(
                f"The checkpoint in {checkpoint.parent} was made with another slide, region or settings; "
                "start a new run instead of resuming (or use another output folder)."
            )
        done = set(saved["done"])
        cells = pd.read_csv(table) if table.is_file() and table.stat().st_size else pd.DataFrame()
        if len(cells):
            cells = cells[cells["tile"].isin(done)].reset_index(drop=True)  # drop a half-written tile
        if len(cells):
            cells.to_csv(table, index=False)
        else:
            table.unlink(missing_ok=True)  # the next tile's cells write the header
        return done, cells, saved
    for path in outputs.values():
        path.unlink(missing_ok=True)
    table.parent.mkdir(parents=True, exist_ok=True)
    return set(), pd.DataFrame(), {}


def _tile_cells(
    tile: np.ndarray,
    window,
    white,
    classifier,
    regions,
    config: WholeSlideConfig,
    pixel_size_um: float,
    on_found: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Segment and classify one tile's pixels (read at ``window``); its own cells (centroid in its core).

    With ``regions``, only the cells whose centroid also lies in them. Before the classifier has loaded
    they go to ``on_found`` first.
    """
    rows, cols, core_rows, core_cols = window
    if tile.min() == tile.max():
        return pd.DataFrame()
    tile, _ = to_rgb8(tile, "slide tile")
    segmentation = segment_field(tile, config.segmentation, white=white, pixel_size_um=pixel_size_um)
    local = segmentation.cells
    y = local["centroid_y"] + rows.start
    x = local["centroid_x"] + cols.start
    owned = (y >= core_rows.start) & (y < core_rows.stop) & (x >= core_cols.start) & (x < core_cols.stop)
    if regions is not None and len(local):
        owned &= inside_polygons(np.column_stack([y, x]), regions)
    own = Segmentation(
        segmentation.labels, segmentation.nuclei, local[owned.to_numpy()].reset_index(drop=True)
    )
    if own.cells.empty:
        return pd.DataFrame()
    if on_found is not None and isinstance(classifier, LazyClassifier) and not classifier.loaded():
        on_found(_in_slide(own.cells.copy(), rows, cols))
    table = classify_cells(tile, own, loaded_classifier(classifier), config.blast_threshold)
    return _in_slide(table, rows, cols)


def _in_slide(table: pd.DataFrame, rows: slice, cols: slice) -> pd.DataFrame:
    """The table's positions moved from a tile's pixels to the slide's (in place)."""
    table[list(SHIFTED_Y)] += rows.start
    table[list(SHIFTED_X)] += cols.start
    return table


def _number(cells: pd.DataFrame, found: int, limit: int | None) -> pd.DataFrame:
    """Give the tile's cells slide-wide ids after the ``found`` earlier ones; stop at ``limit`` in all."""
    if cells.empty:
        return cells
    cells = cells.sort_values(["centroid_y", "centroid_x"]).reset_index(drop=True)
    if limit is not None:
        cells = cells.iloc[: max(0, limit - found)]
    return cells.assign(cell_id=np.arange(found + 1, found + 1 + len(cells)))


def _save(outputs: dict[str, Path], header: dict, done: set[int], new: pd.DataFrame, complete: bool) -> None:
    """Append the tile's cells, then record the tile as done (so a crash in between loses nothing).

    ``header`` holds the run's ``identity`` and its first tile, ``start``.
    """
    table = outputs["cells"]
    if len(new):
        new.to_csv(table, mode="a", header=not table.is_file() or table.stat().st_size == 0, index=False)
    state = {**header, "done": sorted(done), "complete": complete}
    temporary = outputs["checkpoint"].with_suffix(".tmp")
    temporary.write_text(json.dumps(state))
    temporary.replace(outputs["checkpoint"])


def _finish(image, outputs, header, done, cells, classes, regions, pixel_size: PixelSize) -> SlideAnalysis:
    """Write the summary and the QuPath GeoJSON and mark the run complete."""
    summary = {
        "slide": str(image.path) if image.path else None,
        "format": image.format_name,
        "pixel_size_um": pixel_size.um_per_px,
        "pixel_size_source": pixel_size.source,
        "notes": [pixel_size.note],
        "region": "whole slide" if regions is None else f"{len(regions)} polygon(s)",
        "max_white_cells": header["identity"]["config"]["max_white_cells"],
        "tiles_read": len(done),
        "tiles_planned": header["identity"]["tiles"],
        "resumed_after_tiles": header["resumed_after_tiles"],
        "classes": classes,
        **_summary(cells, classes),
    }
    outputs["summary"].write_text(json.dumps(summary, indent=2))
    write_geojson(outputs["geojson"], cells_to_geojson(cells))
    _save(outputs, header, done, cells.iloc[:0], complete=True)
    return SlideAnalysis(cells=cells, classes=classes, summary=summary, outputs=outputs)
