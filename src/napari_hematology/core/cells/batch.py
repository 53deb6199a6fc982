"""Many images at once: ``analyze_paths`` runs the pipeline over files and folders, here or on Dask.

It also writes ``summary.json`` (counts, blast percentages with their 95% Wilson interval, warnings where
too few cells were counted) and ``report.html`` (with a gallery of the cells of each class).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from napari_hematology.core.cells.analysis import analyze_file, cut_crops, get_classifier
from napari_hematology.core.cells.classes import BLAST, DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.cells.classifier import nothing_read_message
from napari_hematology.core.cells.crops import crop_to_rgb8
from napari_hematology.core.cells.magnification import (
    PixelSize,
    camera_consensus,
    check_pixel_size,
    find_pixel_size,
)
from napari_hematology.core.cells.report import GalleryCell, thumbnail_uri, write_report
from napari_hematology.core.cells.segmentation import SegmentationConfig
from napari_hematology.core.cluster import one_thread, run_jobs
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import list_images, read_image
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, no_progress

# A manual differential counts at least 100 white cells (WHO asks for 200 in blood and 500 in marrow
# when a blast percentage decides a diagnosis); fewer cells give a warning.
MIN_DIFFERENTIAL_CELLS = 100
Z_95 = 1.959964
GALLERY_PER_CLASS = 48
GALLERY_CONTEXT = 1.6  # gallery crop side / cell box side: the whole cell and a margin


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
    pixel_size_um: float | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> dict[str, Any]:
    """Analyse smear images (files and/or folders) and write per-image results, a summary and a report.

    Writes ``<stem>_labels.tif``, ``<stem>_cells.csv``, ``<stem>_overlay.png`` per image, then
    ``summary.json`` and ``report.html`` in ``out_dir``. A file that cannot be read or analysed is
    skipped and listed with its reason in the summary's ``skipped``; the others are analysed.

    Args:
        paths: Image files and/or folders.
        out_dir: Output folder (created).
        model_dir: Classifier folder; None uses the shipped weights.
        scheduler: None: several images go to a light local Dask cluster (one image runs here);
            ``"synchronous"``: everything runs in this process; otherwise the address of an existing Dask
            scheduler (``tcp://host:8786``).
        classifier: An already loaded classifier (only used in this process, not on Dask workers).
        config: Segmentation parameters.
        pixel_size_um: The pixel size of every image; None takes each file's, else measures it on the
            red cells (each image's summary says which: ``pixel_size_um``, ``pixel_size_source``).
        device: Where the classifier runs: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``.
        progress: Progress callback (one step per image).
        should_stop: Cancellation callback.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        InputError: A path is missing or holds no images, no image could be analysed, or the pixel size
            or device is not usable.
        ModelFileError: The classifier folder cannot be loaded.
        Cancelled: ``should_stop`` asked to stop.

    """
    files = list_images(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(files)
    config = config or SegmentationConfig()
    if pixel_size_um is not None:
        check_pixel_size(pixel_size_um, "given")
        pixel_sizes, consensus = {}, []
    else:
        pixel_sizes, consensus = _agreed_pixel_sizes(files, config, progress, should_stop)
    jobs = [
        dict(
            path=path,
            out_dir=out_dir,
            stem=stem,
            model_dir=model_dir,
            config=config,
            pixel_size_um=pixel_size_um,
            pixel_size=pixel_sizes.get(path),
            device=device,
        )
        for path, stem in zip(files, stems, strict=True)
    ]
    if scheduler == "synchronous" or (scheduler is None and len(files) == 1):
        classifier = classifier or get_classifier(model_dir, device)
        outcomes = _run_here(jobs, classifier, progress, should_stop)
    else:
        outcomes = run_jobs(_dask_job, jobs, scheduler, progress, should_stop)
    results = [outcome for outcome in outcomes if not isinstance(outcome, InputError)]
    skipped = [
        {"image": str(job["path"]), "reason": str(outcome)}
        for job, outcome in zip(jobs, outcomes, strict=True)
        if isinstance(outcome, InputError)
    ]
    if not results:
        raise InputError(nothing_read_message(skipped))
    summary = _combine(results, model_dir) | {"pixel_size_consensus": consensus, "skipped": skipped}
    summary["total"]["warnings"] += consensus_warnings(consensus)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out_dir / "report.html", summary, cell_gallery(summary, out_dir))
    return summary


def _agreed_pixel_sizes(
    files: list[Path], config: SegmentationConfig, progress, should_stop
) -> tuple[dict[Path, PixelSize], list[dict[str, Any]]]:
    """Each file's pixel size, agreed per camera over the batch (see ``camera_consensus``).

    Files that cannot be read are left out here; their job reports them.
    """
    if len(files) < 2:
        return {}, []
    report = progress or no_progress
    measured = {}
    for done, path in enumerate(files):
        check_cancel(should_stop)
        report(done, len(files), f"measuring the pixel size of {path.name}")
        try:
            smear = read_image(path)
            size = find_pixel_size(
                smear.data,
                reference_um=config.pixel_size_um,
                name=path.name,
                metadata_um=smear.pixel_size_um,
                metadata_source=smear.pixel_size_source,
            )
        except InputError:
            continue
        measured[str(path)] = (size, tuple(smear.data.shape[:2]))
    chosen, records = camera_consensus(measured)
    return {Path(name): size for name, size in chosen.items()}, records


def _run_here(jobs, classifier, progress, should_stop) -> list[dict[str, Any] | InputError]:
    """Each job's summary, or the error that made it skip."""
    report = progress or no_progress
    results: list[dict[str, Any] | InputError] = []
    for done, job in enumerate(jobs):
        check_cancel(should_stop)
        report(done, len(jobs), f"analysing {job['path'].name}")
        # a single image (e.g. a whole slide) reports its own progress, tile by tile
        image_progress = progress if len(jobs) == 1 else None
        try:
            results.append(
                analyze_file(**job, classifier=classifier, progress=image_progress, should_stop=should_stop)
            )
        except InputError as error:
            results.append(error)
    report(len(jobs), len(jobs), "analysed")
    return results


def _dask_job(**job: Any) -> dict[str, Any]:
    one_thread()
    return analyze_file(**job)


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion, as fractions (95% for the default ``z``).

    Args:
        successes: Number of positives (e.g. blasts).
        total: Number counted (> 0).
        z: Standard-normal quantile of the interval.

    Returns:
        The lower and upper bounds, within [0, 1].

    """
    from scipy.stats import binomtest

    confidence = math.erf(z / math.sqrt(2))  # the share of a standard normal within +-z
    interval = binomtest(successes, total).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(interval.low)), min(1.0, float(interval.high))


def blast_uncertainty(blasts: int, cells: int) -> dict[str, Any]:
    """The 95% interval of a blast percentage and the warnings its cell count calls for.

    Args:
        blasts: Cells called blasts.
        cells: White cells counted.

    Returns:
        ``{"blast_ci95_percent": [low, high] or None, "warnings": [text, ...]}``.

    """
    if not cells:
        return {"blast_ci95_percent": None, "warnings": ["No white cells found: there is no differential."]}
    low, high = wilson_interval(blasts, cells)
    warnings = []
    if cells < MIN_DIFFERENTIAL_CELLS:
        warnings.append(
            f"Only {cells} white cell{'' if cells == 1 else 's'} counted: too few for a differential. "
            f"A manual differential counts at least {MIN_DIFFERENTIAL_CELLS} white cells (WHO: 200 in "
            "blood, 500 in marrow for a blast percentage); read the blast percentage with its 95% interval."
        )
    return {"blast_ci95_percent": [round(100 * low, 1), round(100 * high, 1)], "warnings": warnings}


def consensus_warnings(consensus: list[dict[str, Any]]) -> list[str]:
    """One warning per camera whose fields' red-cell rulers disagreed with the agreed pixel size."""
    warnings = []
    for camera in consensus:
        if not camera["disagreeing"]:
            continue
        named = ", ".join(
            f"{Path(item['image']).name} ({item['measured_um_per_px']:.3g})" for item in camera["disagreeing"]
        )
        warnings.append(
            f"{len(camera['disagreeing'])} of {camera['fields']} fields of the {camera['frame'][1]}x"
            f"{camera['frame'][0]} camera measured their pixel size more than 15% from the camera's "
            f"{camera['um_per_px']:.4g} um/px and were analysed at it: {named}"
        )
    return warnings


def cell_gallery(
    summary: dict[str, Any], out_dir: Path, per_class: int = GALLERY_PER_CLASS
) -> dict[str, list[GalleryCell]]:
    """Thumbnails of up to ``per_class`` cells of each class, highest blast probability first.

    Reads the cell tables written in ``out_dir`` and cuts the chosen cells (whole cell and a margin)
    from their images again, so only the shown cells are read.

    Args:
        summary: The summary of the analysed images.
        out_dir: The folder holding their ``<stem>_cells.csv``.
        per_class: Most cells shown per class.

    Returns:
        Class name -> the cells to show, in order.

    """
    chosen = _gallery_choice(summary, out_dir, per_class)
    thumbnails = _thumbnails(chosen, [item["image"] for item in summary["images"]])
    gallery: dict[str, list[GalleryCell]] = {}
    for index, cell in chosen.loc[chosen.index.isin(list(thumbnails))].iterrows():
        gallery.setdefault(cell["label"], []).append(
            GalleryCell(
                image=Path(summary["images"][cell["image_index"]]["image"]).name,
                cell_id=int(cell["cell_id"]),
                probability=float(cell.get(f"prob_{cell['label']}", float("nan"))),
                blast_probability=float(cell["blast_probability"]),
                thumbnail=thumbnails[index],
            )
        )
    return gallery


def _gallery_choice(summary: dict[str, Any], out_dir: Path, per_class: int) -> pd.DataFrame:
    """The cells of all images with ``image_index``, up to ``per_class`` per class, highest blast first."""
    tables = [
        pd.read_csv(out_dir / item["cells_table"]).assign(image_index=index)
        for index, item in enumerate(summary["images"])
    ]
    cells = pd.concat(tables, ignore_index=True).dropna(subset=["label"])
    cells = cells.sort_values("blast_probability", ascending=False, kind="stable")
    return cells.groupby("label", sort=False).head(per_class)


def _thumbnails(cells: pd.DataFrame, images: list[str]) -> dict[int, str]:
    """Thumbnail URI of each cell (by table index), cut from its image."""
    thumbnails: dict[int, str] = {}
    for image_index, group in cells.groupby("image_index"):
        crops = cut_crops(read_image(images[image_index]).data, group, GALLERY_CONTEXT)
        for index, crop in zip(group.index, crops, strict=True):
            try:
                thumbnails[index] = thumbnail_uri(crop_to_rgb8(crop, "crop"))
            except InputError:
                continue  # a sliver at the image border or a blank crop: nothing to look at
    return thumbnails


def _combine(results: list[dict[str, Any]], model_dir) -> dict[str, Any]:
    classes = results[0]["classes"] if results else []
    counts = {name: sum(r["counts"].get(name, 0) for r in results) for name in classes}
    total = sum(r["cells"] for r in results)
    images = [
        {
            **{key: value for key, value in r.items() if key != "classes"},
            **blast_uncertainty(r["counts"].get(BLAST, 0), r["cells"]),
        }
        for r in results
    ]
    return {
        "model": str(model_dir) if model_dir is not None else "shipped default",
        "blast_threshold": DEFAULT_BLAST_THRESHOLD,
        "total": {
            "images": len(results),
            "cells": total,
            "not_in_differential": sum(r.get("not_in_differential", 0) for r in results),
            "left_out": dict(sum((Counter(r.get("left_out", {})) for r in results), Counter())),
            "counts": counts,
            "blast_percent": round(100 * counts.get(BLAST, 0) / total, 2) if total else None,
            **blast_uncertainty(counts.get(BLAST, 0), total),
        },
        "images": images,
    }
