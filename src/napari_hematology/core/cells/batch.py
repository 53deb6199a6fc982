"""Many images at once: ``analyze_paths`` runs the pipeline over files and folders, here or on Dask.

It also writes ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from napari_hematology.core.cells.analysis import analyze_file, get_classifier
from napari_hematology.core.cells.classes import BLAST, DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.cells.report import write_report
from napari_hematology.core.cells.segmentation import SegmentationConfig
from napari_hematology.core.errors import Cancelled, InputError
from napari_hematology.core.io import list_images
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, no_progress

SCHEDULER_TIMEOUT_S = 10


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
