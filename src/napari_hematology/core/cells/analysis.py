"""The blast-detection pipeline for one image: segment white cells, classify them, count them.

``analyze_image`` does one in-memory or lazily read image and ``analyze_file`` one file with its outputs;
``call_classes`` and ``summarize`` re-label and count cells for a blast-probability threshold without
recomputing anything. Many files at once: :mod:`napari_hematology.core.cells.batch`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import BLAST, DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.cells.report import write_overlay
from napari_hematology.core.cells.segmentation import Segmentation, SegmentationConfig, segment_image
from napari_hematology.core.io import read_image, write_labels, write_table
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

CROP_CONTEXT = 1.3
MIN_CROP_SIDE = 32
LABEL_TILE = 1024


@dataclass
class ImageAnalysis:
    """Cells of one image, segmented and classified.

    Attributes:
        labels: Cell label image (numpy, or a chunked array for whole slides).
        cells: Per-cell table: segmentation features, ``label``, ``blast_probability``, ``prob_<class>``.
        classes: Class names of the classifier.

    """

    labels: Any
    cells: pd.DataFrame
    classes: list[str]


def cut_crops(image, cells: pd.DataFrame, context: float = CROP_CONTEXT) -> list[np.ndarray]:
    """Cut one square crop per cell, centred on the cell, ``context`` times its larger box side.

    Crops are at least ``MIN_CROP_SIDE`` pixels wide (less only where the image border clips them).

    Args:
        image: (Y, X, 3) array, numpy or dask.
        cells: Table with centroid and bounding-box columns.
        context: Crop side relative to the cell's box.

    Returns:
        Crops (clipped at the image border), in table order.

    """
    height, width = image.shape[:2]
    crops = []
    for cell in cells.itertuples():
        side = max(MIN_CROP_SIDE, context * max(cell.bbox_y1 - cell.bbox_y0, cell.bbox_x1 - cell.bbox_x0))
        half = side / 2
        y0, y1 = int(max(0, cell.centroid_y - half)), int(min(height, cell.centroid_y + half + 1))
        x0, x1 = int(max(0, cell.centroid_x - half)), int(min(width, cell.centroid_x + half + 1))
        crops.append(image[y0:y1, x0:x1, :3])
    if crops and not isinstance(image, np.ndarray):
        import dask

        crops = dask.compute(*crops)  # one pass over the lazily read chunks for all cells
    return [np.asarray(crop) for crop in crops]


def call_classes(
    cells: pd.DataFrame, classes: list[str], blast_threshold: float = DEFAULT_BLAST_THRESHOLD
) -> pd.Series:
    """Call each cell's class for a blast-probability threshold.

    A cell is a ``blast`` when its blast probability reaches the threshold, otherwise its most probable
    other class.

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
    labels[cells["blast_probability"].to_numpy() >= blast_threshold] = BLAST
    return pd.Series(labels, index=cells.index, dtype=object)


def summarize(labels: pd.Series, classes: list[str]) -> dict[str, Any]:
    """Count cells per class and the blast percentage.

    Args:
        labels: Class name of each cell.
        classes: Class names, reported even when absent.

    Returns:
        ``{"cells": n, "counts": {class: n}, "blast_percent": float or None}`` (None without cells).

    """
    counts = {name: int((labels == name).sum()) for name in classes}
    total = int(len(labels))
    blast = counts.get(BLAST, 0)
    return {
        "cells": total,
        "counts": counts,
        "blast_percent": round(100 * blast / total, 2) if total else None,
    }


def classify_cells(
    image,
    segmentation: Segmentation,
    classifier,
    blast_threshold: float = DEFAULT_BLAST_THRESHOLD,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> pd.DataFrame:
    """Classify every segmented cell and join the class columns to its features.

    Args:
        image: The segmented image (numpy or dask).
        segmentation: Its segmentation.
        classifier: Object with ``classes`` and ``predict(crops, progress=, should_stop=)``.
        blast_threshold: Blast-probability threshold for the ``label`` column.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The cell table with ``label``, ``blast_probability`` and ``prob_<class>`` columns added.

    """
    cells = segmentation.cells.reset_index(drop=True)
    if cells.empty:
        columns = ["label", "blast_probability"] + [f"prob_{name}" for name in classifier.classes]
        return cells.reindex(columns=list(cells.columns) + columns)
    crops = cut_crops(image, cells)
    check_cancel(should_stop)
    predictions = classifier.predict(crops, progress=progress, should_stop=should_stop).reset_index(drop=True)
    table = pd.concat([cells, predictions], axis=1)
    table["label"] = call_classes(table, list(classifier.classes), blast_threshold)
    return table


def analyze_image(
    image,
    classifier,
    config: SegmentationConfig | None = None,
    *,
    labels_out=None,
    name: str = "image",
    blast_threshold: float = DEFAULT_BLAST_THRESHOLD,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> ImageAnalysis:
    """Segment and classify the white cells of one image.

    Args:
        image: (Y, X, 3) array, numpy or dask; any size.
        classifier: A loaded cell classifier
            (see :func:`napari_hematology.core.cells.classifier.load_classifier`).
        config: Segmentation parameters.
        labels_out: Optional array to write the labels into (bounded memory for whole slides).
        name: Image name for messages.
        blast_threshold: Blast-probability threshold for the ``label`` column.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        Labels, the classified cell table and the class names.

    """
    segmentation = segment_image(
        image, config, labels_out=labels_out, name=name, progress=progress, should_stop=should_stop
    )
    cells = classify_cells(image, segmentation, classifier, blast_threshold, progress, should_stop)
    return ImageAnalysis(labels=segmentation.labels, cells=cells, classes=list(classifier.classes))


def get_classifier(model_dir: str | Path | None = None):
    """Load a cell classifier once per process (reloaded when its weights file changes).

    Args:
        model_dir: Classifier folder; None for the shipped weights.

    Raises:
        ModelFileError: The folder cannot be loaded.

    """
    from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR
    from napari_hematology.core.registry import WEIGHTS_FILE

    weights = Path(model_dir or SHIPPED_MODEL_DIR) / WEIGHTS_FILE
    stamp = weights.stat().st_mtime if weights.is_file() else 0.0
    return _load_classifier(None if model_dir is None else str(model_dir), stamp)


@lru_cache(maxsize=4)
def _load_classifier(model_dir: str | None, stamp: float):
    from napari_hematology.core.cells.classifier import load_classifier

    return load_classifier(model_dir)


def analyze_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    stem: str | None = None,
    model_dir: str | Path | None = None,
    classifier=None,
    config: SegmentationConfig | None = None,
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
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The image's summary: file names, cell count, counts per class, blast %.

    """
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    classifier = classifier or get_classifier(model_dir)
    image = read_image(path).data
    config = config or SegmentationConfig()
    labels_path = out_dir / f"{stem}_labels.tif"
    tiled = image.shape[0] * image.shape[1] > config.tile_size**2
    overlay = out_dir / f"{stem}_overlay.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{stem}_") as scratch:
        labels_out = _chunked_labels(Path(scratch) / "labels.zarr", image.shape[:2]) if tiled else None
        analysis = analyze_image(
            image,
            classifier,
            config,
            labels_out=labels_out,
            name=path.name,
            progress=progress,
            should_stop=should_stop,
        )
        if tiled:
            _write_labels_tiled(labels_path, analysis.labels)
        else:
            write_labels(labels_path, analysis.labels)
        write_table(out_dir / f"{stem}_cells.csv", analysis.cells)
        write_overlay(overlay, image, analysis.labels, analysis.cells)
    summary = summarize(analysis.cells["label"], analysis.classes)
    return {
        "image": str(path),
        "labels": labels_path.name,
        "cells_table": f"{stem}_cells.csv",
        "overlay": overlay.name,
        "classes": analysis.classes,
        **summary,
    }


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


