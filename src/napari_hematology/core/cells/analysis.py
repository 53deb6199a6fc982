"""The blast-detection pipeline: segment white cells, classify them, and report counts and blast %.

``analyze_paths`` is the entry point of the ``analyze`` command, the ``demo`` command and the widget's
batch use; ``analyze_image`` does one in-memory or lazily read image; ``call_classes`` and
``summarize`` re-label and count cells for a blast-probability threshold without recomputing anything.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.errors import Cancelled, InputError
from napari_hematology.core.io import list_images, read_image, write_labels, write_table
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, no_progress
from napari_hematology.core.cells.segmentation import Segmentation, SegmentationConfig, segment_image

BLAST = "blast"
DEFAULT_BLAST_THRESHOLD = 0.5
CROP_CONTEXT = 1.3
MIN_CROP_SIDE = 32
OVERLAY_MAX_SIDE = 1024
LABEL_TILE = 1024
SCHEDULER_TIMEOUT_S = 10
CLASS_COLOURS = {
    "neutrophil": (66, 135, 245),
    "lymphocyte": (46, 204, 113),
    "monocyte": (241, 196, 15),
    "eosinophil": (230, 126, 34),
    "basophil": (155, 89, 182),
    "blast": (231, 76, 60),
}
OTHER_COLOUR = (200, 200, 200)


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
        classifier: A loaded cell classifier (see :func:`napari_hematology.core.cells.classifier.load_classifier`).
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


def unique_stems(paths: list[Path]) -> list[str]:
    """Output prefixes for the images: their stems, numbered where two images share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
    return stems


def analyze_paths(
    paths,
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    scheduler: str | None = None,
    classifier=None,
    config: SegmentationConfig | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> dict[str, Any]:
    """Analyse smear images (files and/or folders) and write per-image results, a summary and a report.

    Writes ``<stem>_labels.tif``, ``<stem>_cells.csv``, ``<stem>_overlay.png`` per image, then
    ``summary.json`` and ``report.html`` in ``out_dir``.

    Args:
        paths: Image files and/or folders.
        out_dir: Output folder (created).
        model_dir: Classifier folder; None uses the shipped weights.
        scheduler: None: several images go to a light local Dask cluster (one image runs here);
            ``"synchronous"``: everything runs in this process; otherwise the address of an existing Dask
            scheduler (``tcp://host:8786``).
        classifier: An already loaded classifier (only used in this process, not on Dask workers).
        config: Segmentation parameters (e.g. ``SegmentationConfig().scaled(0.5)`` for lower magnification).
        progress: Progress callback (one step per image).
        should_stop: Cancellation callback.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        InputError: A path is missing or holds no images, or an image cannot be analysed.
        ModelFileError: The classifier folder cannot be loaded.
        Cancelled: ``should_stop`` asked to stop.

    """
    files = list_images(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(files)
    jobs = [
        dict(path=path, out_dir=out_dir, stem=stem, model_dir=model_dir, config=config)
        for path, stem in zip(files, stems, strict=True)
    ]
    if scheduler == "synchronous" or (scheduler is None and len(files) == 1):
        classifier = classifier or get_classifier(model_dir)
        results = _run_here(jobs, classifier, progress, should_stop)
    else:
        results = _run_on_dask(jobs, scheduler, progress, should_stop)
    summary = _combine(results, model_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out_dir / "report.html", summary)
    return summary


def _run_here(jobs, classifier, progress, should_stop) -> list[dict[str, Any]]:
    report = progress or no_progress
    results = []
    for done, job in enumerate(jobs):
        check_cancel(should_stop)
        report(done, len(jobs), f"analysing {job['path'].name}")
        # a single image (e.g. a whole slide) reports its own progress, tile by tile
        image_progress = progress if len(jobs) == 1 else None
        results.append(
            analyze_file(**job, classifier=classifier, progress=image_progress, should_stop=should_stop)
        )
    report(len(jobs), len(jobs), "analysed")
    return results


def _dask_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    return analyze_file(**job)


def _run_on_dask(jobs, scheduler, progress, should_stop) -> list[dict[str, Any]]:
    from dask.distributed import LocalCluster, as_completed

    report = progress or no_progress
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=min(2, len(jobs)),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = cluster.get_client() if cluster is not None else _connect(scheduler)
    try:
        futures = [client.submit(_dask_job, job, pure=False) for job in jobs]
        order = {future.key: index for index, future in enumerate(futures)}
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        report(0, len(jobs), "analysing")
        for done, future in enumerate(as_completed(futures), start=1):
            if should_stop is not None and should_stop():
                client.cancel(futures)
                raise Cancelled("Cancelled by the user.")
            results[order[future.key]] = future.result()
            report(done, len(jobs), "analysing")
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(address: str):
    from dask.distributed import Client

    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(
            f"Cannot reach the Dask scheduler at {address!r} ({error}). Check the address "
            "(tcp://host:8786) and that the scheduler is running, or leave out --scheduler to work "
            "on this computer."
        ) from error


def _combine(results: list[dict[str, Any]], model_dir) -> dict[str, Any]:
    classes = results[0]["classes"] if results else []
    counts = {name: sum(r["counts"].get(name, 0) for r in results) for name in classes}
    total = sum(r["cells"] for r in results)
    return {
        "model": str(model_dir) if model_dir is not None else "shipped default",
        "blast_threshold": DEFAULT_BLAST_THRESHOLD,
        "total": {
            "images": len(results),
            "cells": total,
            "counts": counts,
            "blast_percent": round(100 * counts.get(BLAST, 0) / total, 2) if total else None,
        },
        "images": [{key: value for key, value in r.items() if key != "classes"} for r in results],
    }


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
