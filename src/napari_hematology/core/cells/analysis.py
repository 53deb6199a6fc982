"""The blast-detection pipeline for one image: segment white cells, classify them, count them.

``analyze_image`` does one in-memory or lazily read image and ``analyze_file`` one file with its outputs;
``call_classes`` and ``summarize`` re-label and count cells for a blast-probability threshold without
recomputing anything. Many files at once: :mod:`napari_hematology.core.cells.batch`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import BLAST, DEFAULT_BLAST_THRESHOLD, NOT_IN_DIFFERENTIAL, OTHER
from napari_hematology.core.cells.classifier import ATYPICAL_SCORE, QUALITY
from napari_hematology.core.cells.crops import OK
from napari_hematology.core.cells.magnification import PixelSize, find_pixel_size
from napari_hematology.core.cells.report import write_overlay
from napari_hematology.core.cells.segmentation import Segmentation, SegmentationConfig, segment_image
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import MIN_SIDE, read_image, write_labels, write_table
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

CROP_CONTEXT = 1.3
MIN_CROP_SIDE = 32  # pixels at the segmentation's reference pixel size
LABEL_TILE = 1024
AT_EDGE = "at_edge"
CUT_BY_EDGE = "cut by the image edge"
MOSTLY_OUTSIDE = "crop mostly outside the image"
CROWDED_FIELD = "too many white cells for one field (red cells taken for white cells?)"
MIN_INSIDE_SHARE = 0.5  # a crop with less of its square inside the image is mostly outside
# White cells per 10,000 square micrometres beyond which a field is not believed: even packed side by side
# white cells (about 120 um^2 each) leave room for fewer; seen when a stain makes red cells look nuclear.
MAX_WHITE_CELLS_PER_10K_UM2 = 60
# An image at most this wide in which one cell's box covers this share is a single-cell crop, not a field.
CROP_LIKE_SIDE = 400
CROP_LIKE_SHARE = 0.15


@dataclass
class ImageAnalysis:
    """Cells of one image, segmented and classified.

    Attributes:
        labels: Cell label image (numpy, or a chunked array for whole slides).
        cells: Per-cell table: segmentation features, ``label``, ``blast_probability``, ``prob_<class>``,
            ``atypical_score``; ``cells.attrs`` holds ``pixel_size_um`` and ``pixel_size_source``.
        classes: Class names of the classifier.
        pixel_size: The pixel size the image was segmented at, and how it was found.

    """

    labels: Any
    cells: pd.DataFrame
    classes: list[str]
    pixel_size: PixelSize


def cut_crops(
    image, cells: pd.DataFrame, context: float = CROP_CONTEXT, min_side: float = MIN_CROP_SIDE
) -> list[np.ndarray]:
    """Cut one square crop per cell, centred on the cell, ``context`` times its larger box side.

    Crops are at least ``min_side`` pixels wide (less only where the image border clips them).

    Args:
        image: (Y, X, 3) array, numpy or dask.
        cells: Table with centroid and bounding-box columns.
        context: Crop side relative to the cell's box.
        min_side: Smallest crop side in the image's pixels (see :func:`min_crop_side`).

    Returns:
        Crops (clipped at the image border), in table order.

    """
    height, width = image.shape[:2]
    crops = []
    for cell, side in zip(cells.itertuples(), crop_sides(cells, context, min_side), strict=True):
        half = side / 2
        y0, y1 = int(max(0, cell.centroid_y - half)), int(min(height, cell.centroid_y + half + 1))
        x0, x1 = int(max(0, cell.centroid_x - half)), int(min(width, cell.centroid_x + half + 1))
        crops.append(image[y0:y1, x0:x1, :3])
    if crops and not isinstance(image, np.ndarray):
        import dask

        crops = dask.compute(*crops)  # one pass over the lazily read chunks for all cells
    return [np.asarray(crop) for crop in crops]


def crop_sides(
    cells: pd.DataFrame, context: float = CROP_CONTEXT, min_side: float = MIN_CROP_SIDE
) -> np.ndarray:
    """Side of each cell's square crop: ``context`` times its larger box side, at least ``min_side``."""
    heights = (cells["bbox_y1"] - cells["bbox_y0"]).to_numpy(dtype=float)
    widths = (cells["bbox_x1"] - cells["bbox_x0"]).to_numpy(dtype=float)
    return np.maximum(min_side, context * np.maximum(heights, widths))


def min_crop_side(config: SegmentationConfig, pixel_size_um: float) -> float:
    """``MIN_CROP_SIDE`` in pixels of an image of ``pixel_size_um``: the same physical width everywhere.

    Never below the smallest image the readers accept (``core.io.MIN_SIDE``).
    """
    return max(float(MIN_SIDE), MIN_CROP_SIDE / config.zoom(pixel_size_um))


def call_classes(
    cells: pd.DataFrame, classes: list[str], blast_threshold: float = DEFAULT_BLAST_THRESHOLD
) -> pd.Series:
    """Call each cell's class for a blast-probability threshold.

    A cell is a ``blast`` when its blast probability reaches the threshold, otherwise its most probable
    other class; a cell without probabilities (no visible cell in its crop) is ``other``.

    Args:
        cells: Table with ``blast_probability`` and ``prob_<class>`` columns.
        classes: Class names.
        blast_threshold: Blast-probability threshold in [0, 1].

    Returns:
        The class name of each cell.

    """
    others = [name for name in classes if name != BLAST]
    if cells.empty:
        return pd.Series([], dtype=object, index=cells.index)
    best_other = cells[[f"prob_{name}" for name in others]].to_numpy().argmax(axis=1)
    labels = np.asarray(others, dtype=object)[best_other]
    blast_probability = cells["blast_probability"].to_numpy(dtype=float)
    labels[blast_probability >= blast_threshold] = BLAST
    labels[np.isnan(blast_probability)] = OTHER
    return pd.Series(labels, index=cells.index, dtype=object)


def summarize(labels: pd.Series, classes: list[str], quality: pd.Series | None = None) -> dict[str, Any]:
    """Count cells per class and the blast percentage of the white cells.

    Args:
        labels: Class name of each cell.
        classes: Class names, reported even when absent; ``other`` is added when a cell has it.
        quality: Each cell's front-end quality (``ok`` or the reason it is not); cells that are not
            ``ok`` are left out of every count and listed per reason.

    Returns:
        ``{"cells": white cells, "not_in_differential": n, "counts": {class: n}, "blast_percent": float
        or None, "left_out": {reason: n}}``: erythroblasts and ``other`` are counted per class but are
        not white cells, so they are left out of ``cells`` and of the percentage (None without white
        cells).

    """
    left_out: dict[str, int] = {}
    if quality is not None:
        flagged = quality.to_numpy() != OK
        left_out = {str(reason): int(n) for reason, n in quality[flagged].value_counts().items()}
        labels = labels[~flagged]
    names = [*classes, OTHER] if OTHER not in classes and (labels == OTHER).any() else classes
    counts = {name: int((labels == name).sum()) for name in names}
    white_cells = int((~labels.isin(NOT_IN_DIFFERENTIAL)).sum())
    blast = counts.get(BLAST, 0)
    return {
        "cells": white_cells,
        "not_in_differential": int(len(labels)) - white_cells,
        "counts": counts,
        "blast_percent": round(100 * blast / white_cells, 2) if white_cells else None,
        "left_out": left_out,
    }


def cell_quality(
    cells: pd.DataFrame, shape: tuple[int, ...], crop_min_side: float, pixel_size_um: float | None
) -> pd.DataFrame:
    """Front-end checks of each cell of one image: ``at_edge`` and ``quality`` (``ok`` or the reason).

    A cell is flagged when it touches the image border (digital-morphology systems do not count such
    cells), when most of its crop lies outside the image, when the crop normaliser found no nucleus or
    the crop is out of focus (its ``quality`` column, if present), or when the field holds more white
    cells than can fit (a stain that makes red cells look like nuclei).

    Args:
        cells: Cell table with bounding boxes and centroids (and optionally the crop ``quality``).
        shape: The image's height and width.
        crop_min_side: Smallest crop side (as given to :func:`cut_crops`).
        pixel_size_um: The image's pixel size, for the crowding check; None skips it.

    Returns:
        ``cells`` with ``at_edge`` and ``quality`` set.

    """
    height, width = shape[:2]
    boxes = cells[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(dtype=float)
    at_edge = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= height) | (boxes[:, 3] >= width)
    side = crop_sides(cells, min_side=crop_min_side)
    centre_y, centre_x = cells["centroid_y"].to_numpy(float), cells["centroid_x"].to_numpy(float)
    inside_y = np.minimum(height, centre_y + side / 2) - np.maximum(0, centre_y - side / 2)
    inside_x = np.minimum(width, centre_x + side / 2) - np.maximum(0, centre_x - side / 2)
    outside = inside_y * inside_x < MIN_INSIDE_SHARE * side**2
    quality = cells[QUALITY].fillna(OK) if QUALITY in cells else pd.Series(OK, index=cells.index)
    quality = quality.to_numpy(dtype=object)
    quality = np.where(outside, MOSTLY_OUTSIDE, quality)
    quality = np.where(at_edge, CUT_BY_EDGE, quality)
    if pixel_size_um is not None and len(cells):
        area_10k_um2 = height * width * pixel_size_um**2 / 10_000
        if len(cells) > max(1.0, area_10k_um2) * MAX_WHITE_CELLS_PER_10K_UM2:
            quality[:] = CROWDED_FIELD
    return cells.assign(**{AT_EDGE: at_edge, QUALITY: quality})


def classify_cells(
    image,
    segmentation: Segmentation,
    classifier,
    blast_threshold: float = DEFAULT_BLAST_THRESHOLD,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    *,
    crop_min_side: float = MIN_CROP_SIDE,
    pixel_size_um: float | None = None,
) -> pd.DataFrame:
    """Classify every segmented cell, check it, and join the class and quality columns to its features.

    Args:
        image: The segmented image (numpy or dask).
        segmentation: Its segmentation.
        classifier: Object with ``classes`` and ``predict(crops, progress=, should_stop=)``.
        blast_threshold: Blast-probability threshold for the ``label`` column.
        progress: Progress callback.
        should_stop: Cancellation callback.
        crop_min_side: Smallest crop side in the image's pixels (see :func:`min_crop_side`).
        pixel_size_um: The image's pixel size (for the crowded-field check); None skips that check.

    Returns:
        The cell table with ``label``, ``blast_probability``, ``prob_<class>``, ``atypical_score``,
        ``quality`` and ``at_edge`` columns added (see :func:`cell_quality`).

    """
    cells = segmentation.cells.reset_index(drop=True)
    if cells.empty:
        columns = ["label", "blast_probability"] + [f"prob_{name}" for name in classifier.classes]
        return cells.reindex(columns=[*cells.columns, *columns, ATYPICAL_SCORE, QUALITY, AT_EDGE])
    crops = cut_crops(image, cells, min_side=crop_min_side)
    check_cancel(should_stop)
    predictions = classifier.predict(crops, progress=progress, should_stop=should_stop).reset_index(drop=True)
    table = cell_quality(pd.concat([cells, predictions], axis=1), image.shape, crop_min_side, pixel_size_um)
    table["label"] = call_classes(table, list(classifier.classes), blast_threshold)
    return table


def analyze_image(
    image,
    classifier,
    config: SegmentationConfig | None = None,
    *,
    pixel_size: PixelSize | None = None,
    labels_out=None,
    name: str = "image",
    blast_threshold: float = DEFAULT_BLAST_THRESHOLD,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> ImageAnalysis:
    """Segment and classify the white cells of one image.

    Args:
        image: (Y, X, 3) array, numpy or dask; any size and magnification.
        classifier: A loaded cell classifier
            (see :func:`napari_hematology.core.cells.classifier.load_classifier`).
        config: Segmentation parameters.
        pixel_size: The image's pixel size; None measures it on the red cells (see
            :func:`~napari_hematology.core.cells.magnification.find_pixel_size`).
        labels_out: Optional array to write the labels into (bounded memory for whole slides).
        name: Image name for messages.
        blast_threshold: Blast-probability threshold for the ``label`` column.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        Labels, the classified cell table, the class names and the pixel size used.

    """
    config = config or SegmentationConfig()
    pixel_size = pixel_size or find_pixel_size(image, reference_um=config.pixel_size_um, name=name)
    segmentation = segment_image(
        image,
        config,
        pixel_size_um=pixel_size.um_per_px,
        labels_out=labels_out,
        name=name,
        progress=progress,
        should_stop=should_stop,
    )
    cells = classify_cells(
        image,
        segmentation,
        classifier,
        blast_threshold,
        progress,
        should_stop,
        crop_min_side=min_crop_side(config, pixel_size.um_per_px),
        pixel_size_um=pixel_size.um_per_px,
    )
    cells.attrs.update(pixel_size_um=pixel_size.um_per_px, pixel_size_source=pixel_size.source)
    return ImageAnalysis(
        labels=segmentation.labels, cells=cells, classes=list(classifier.classes), pixel_size=pixel_size
    )


def get_classifier(model_dir: str | Path | None = None, device: str = "auto"):
    """Load a cell classifier once per process (reloaded when its weights file changes).

    Args:
        model_dir: Classifier folder; None for the shipped weights.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.

    Raises:
        ModelFileError: The folder cannot be loaded.
        InputError: The device is unknown or not available.

    """
    from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR
    from napari_hematology.core.registry import WEIGHTS_FILE

    weights = Path(model_dir or SHIPPED_MODEL_DIR) / WEIGHTS_FILE
    stamp = weights.stat().st_mtime if weights.is_file() else 0.0
    return _load_classifier(None if model_dir is None else str(model_dir), stamp, device)


class LazyClassifier:
    """A classifier loaded the first time it is needed, so that work needing none comes first.

    In a fresh process importing torch and building the network take seconds: a whole-slide run finds its
    reading area and its first tile's cells (and shows them) before that. Loading on a thread instead
    gained nothing: both hold Python's lock most of the time.
    """

    def __init__(self, load: Callable[[], Any]) -> None:
        """Keep the loader; nothing loads yet.

        Args:
            load: Returns the loaded classifier (e.g. ``partial(get_classifier, model_dir)``).

        """
        self._load = load
        self._classifier = None

    def loaded(self) -> bool:
        """Whether the classifier has been loaded."""
        return self._classifier is not None

    def get(self):
        """The classifier, loaded now if it is not yet (raises the loader's errors)."""
        if self._classifier is None:
            self._classifier = self._load()
        return self._classifier


def loaded_classifier(classifier):
    """The classifier itself: a :class:`LazyClassifier`'s (loaded now if need be), any other as it is."""
    return classifier.get() if isinstance(classifier, LazyClassifier) else classifier


@lru_cache(maxsize=4)
def _load_classifier(model_dir: str | None, stamp: float, device: str):
    from napari_hematology.core.cells.classifier import load_classifier

    return load_classifier(model_dir, device)


def analyze_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    stem: str | None = None,
    model_dir: str | Path | None = None,
    classifier=None,
    config: SegmentationConfig | None = None,
    pixel_size_um: float | None = None,
    pixel_size: PixelSize | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> dict[str, Any]:
    """Analyse one image file and write ``<stem>_labels.tif``, ``<stem>_cells.csv`` and an overlay PNG.

    Args:
        path: Image file (large TIFFs are read lazily and processed tile by tile).
        out_dir: Output folder.
        stem: Output file prefix; the image's stem if None.
        model_dir: Classifier folder (None = shipped weights); ignored when ``classifier`` is given.
        classifier: An already loaded classifier.
        config: Segmentation parameters.
        pixel_size_um: The user's pixel size; None takes the file's, else measures it on the red cells.
        pixel_size: The pixel size already decided for this file (e.g. agreed over a batch); used when
            ``pixel_size_um`` is None.
        device: Where the classifier runs when it is loaded here (``auto``, ``cpu``, ``cuda``, ``mps``).
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The image's summary: file names, pixel size and how it was found, cell count, counts per class,
        blast %.

    Raises:
        InputError: The file cannot be read or analysed, or ``pixel_size_um`` is implausible.

    """
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    classifier = classifier or get_classifier(model_dir, device)
    smear = read_image(path)
    image = smear.data
    config = config or SegmentationConfig()
    pixel_size = (pixel_size if pixel_size_um is None else None) or find_pixel_size(
        image,
        reference_um=config.pixel_size_um,
        name=path.name,
        user_um=pixel_size_um,
        metadata_um=getattr(smear, "pixel_size_um", None),
        metadata_source=getattr(smear, "pixel_size_source", None),
    )
    labels_path = out_dir / f"{stem}_labels.tif"
    tiled = image.shape[0] * image.shape[1] > config.tile_side(pixel_size.um_per_px) ** 2
    overlay = out_dir / f"{stem}_overlay.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{stem}_") as scratch:
        labels_out = _chunked_labels(Path(scratch) / "labels.zarr", image.shape[:2]) if tiled else None
        analysis = analyze_image(
            image,
            classifier,
            config,
            pixel_size=pixel_size,
            labels_out=labels_out,
            name=path.name,
            progress=progress,
            should_stop=should_stop,
        )
        _refuse_single_cell_crop(image.shape, analysis.cells, path.name)
        if tiled:
            _write_labels_tiled(labels_path, analysis.labels)
        else:
            write_labels(labels_path, analysis.labels)
        write_table(out_dir / f"{stem}_cells.csv", analysis.cells)
        write_overlay(overlay, image, analysis.labels, analysis.cells)
    summary = summarize(analysis.cells["label"], analysis.classes, analysis.cells[QUALITY])
    return {
        "image": str(path),
        "labels": labels_path.name,
        "cells_table": f"{stem}_cells.csv",
        "overlay": overlay.name,
        "pixel_size_um": round(pixel_size.um_per_px, 5),
        "pixel_size_source": pixel_size.source,
        "pixel_size_note": pixel_size.note,
        "classes": analysis.classes,
        **summary,
    }


def _refuse_single_cell_crop(shape: tuple[int, ...], cells: pd.DataFrame, name: str) -> None:
    """Refuse a small image that one white cell fills: a single-cell crop, which ``classify`` reads."""
    if max(shape[:2]) > CROP_LIKE_SIDE or cells.empty:
        return
    box_area = (cells["bbox_y1"] - cells["bbox_y0"]) * (cells["bbox_x1"] - cells["bbox_x0"])
    if box_area.max() >= CROP_LIKE_SHARE * shape[0] * shape[1]:
        raise InputError(
            f"{name} looks like a single-cell crop ({shape[1]}x{shape[0]} pixels, one cell fills it), not a "
            "smear field: classify crops with 'napari-hematology classify', or analyse the field it was "
            "cut from."
        )


def _chunked_labels(store: Path, shape: tuple[int, int]):
    import zarr
    from zarr.codecs import BloscCodec

    return zarr.create_array(
        str(store),
        overwrite=True,
        shape=shape,
        chunks=(LABEL_TILE, LABEL_TILE),
        dtype=np.uint32,
        fill_value=0,
        compressors=BloscCodec(cname="lz4", clevel=1),  # scratch space: speed over size
    )


def _write_labels_tiled(path: Path, labels) -> None:
    """Write a chunked label array to a tiled, compressed TIFF one tile at a time."""
    import tifffile

    height, width = labels.shape

    def tiles():
        for y in range(0, height, LABEL_TILE):
            for x in range(0, width, LABEL_TILE):
                block = np.zeros((LABEL_TILE, LABEL_TILE), dtype=np.uint32)
                part = np.asarray(labels[y : y + LABEL_TILE, x : x + LABEL_TILE])
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        tiles(),
        shape=(height, width),
        dtype=np.uint32,
        tile=(LABEL_TILE, LABEL_TILE),
        compression="zlib",
    )


