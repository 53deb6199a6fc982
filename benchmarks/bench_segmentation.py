"""Benchmark of white-cell segmentation and of the ``analyze`` pipeline.

Measures, on ``../shared/data`` (the BCCD ``test`` split is held back and never used):

- detection F1 at IoU >= 0.5 against the BCCD WBC boxes, per split (``train`` was used for tuning);
- mean Dice of nucleus and whole-cell masks against BCCD ``wbc_masks`` (nucleus >= 200, cell >= 64);
- mean Dice on ``single_cells/wbc_seg`` (nucleus 255, cytoplasm 128) and ``single_cells/all_idb2`` (two other
  labs) for the cell nearest the centre, with the pixel size set from a known scale relative to BCCD;
- the red-cell ruler's constants (``--calibrate``, BCCD ``train`` only) and, on BCCD ``val`` resized to
  0.5x, 1x and 2x with the pixel size measured on the red cells (no ``--scale``), detection F1 and the
  estimator's error against the known resize factor (``--scales``);
- segmentation speed in megapixels per second (single thread, BCCD fields);
- end-to-end time of ``analyze`` on one 640x480 field;
- peak memory (max RSS of a subprocess) and time of the whole pipeline (segmentation, classification,
  label TIFF, table, overlay) on a 20,000 x 20,000 tiled TIFF built from BCCD fields.

Run: ``.venv/bin/python benchmarks/bench_segmentation.py`` (about 5 minutes on 2 cores); writes
``benchmarks/results/segmentation.json``. ``--quick`` evaluates fewer images and skips the big slide;
``--calibrate``, ``--scales``, ``--stain-reference``, ``--stain-normalisation`` and ``--slide-only``
re-measure one part and keep the others; ``--keep-slide`` re-measures everything but the whole slide.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.cells.magnification import (
    RED_CELL_DIAMETER_UM,
    find_pixel_size,
    red_cell_diameter,
)
from napari_hematology.core.cells.segmentation import (
    SegmentationConfig,
    estimate_white,
    resize_nearest,
    resize_rgb,
    segment_field,
)
from napari_hematology.core.cells.stain import estimate_stains, od_tables, stained_od
from napari_hematology.core.io import read_image

DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BCCD = DATA / "smear_fields" / "bccd"
WBC_SEG = DATA / "single_cells" / "wbc_seg"
RESULTS = Path(__file__).resolve().parent / "results" / "segmentation.json"
SLIDE_SIDE = 20_000
# Magnification of each single-cell set relative to BCCD: mean white-cell diameter in its masks / in BCCD's.
SINGLE_CELL_SCALE = {"wbc_seg/dataset1": 0.45, "wbc_seg/dataset2": 1.2, "all_idb2": 0.8}
SCALES = (0.5, 1.0, 2.0)
# The mask source that decides whether stain normalisation is on by default (as in the classifier benchmark).
VALIDATION_SOURCE = "wbc_seg/dataset2"


def wbc_boxes(xml_path: Path) -> list[tuple[int, int, int, int]]:
    """WBC boxes (y0, x0, y1, x1) of a Pascal VOC annotation."""
    boxes = []
    for item in ET.parse(xml_path).findall("object"):
        if item.findtext("name") != "WBC":
            continue
        box = item.find("bndbox")
        x0, y0, x1, y1 = (int(float(box.findtext(key))) for key in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((y0, x0, y1, x1))
    return boxes


def box_iou(a, b) -> float:
    """Intersection over union of two (y0, x0, y1, x1) boxes."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    if height <= 0 or width <= 0:
        return 0.0
    inter = height * width
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def match_boxes(predicted, truth, threshold: float = 0.5) -> int:
    """Greedy one-to-one matching by IoU; returns the number of true positives."""
    pairs = sorted(
        ((box_iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)), reverse=True
    )
    used_p, used_t, hits = set(), set(), 0
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hits += 1
    return hits


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def bccd_rows(split: str, limit: int | None = None):
    """Rows of the BCCD index for one split (every k-th row when ``limit`` is given)."""
    index = pd.read_csv(BCCD / "index.csv")
    index = index[index["split"] == split]
    return index.iloc[:: max(1, len(index) // limit)] if limit else index


def evaluate_bccd(
    split: str,
    config: SegmentationConfig,
    limit: int | None = None,
    resize: float = 1.0,
    measure_pixel_size: bool = False,
) -> dict:
    """Detection F1 and mask Dice on one BCCD split.

    Args:
        split: ``train`` or ``val``.
        config: Segmentation settings.
        limit: Evaluate about this many fields.
        resize: Resize each field (and its annotations) by this factor first, as another magnification.
        measure_pixel_size: Measure each field's pixel size on its red cells (as ``segment`` does without
            ``--scale``) instead of giving segmentation the known one; also report the estimator's error.

    """
    index = bccd_rows(split, limit)
    hits = n_pred = n_true = 0
    nucleus_dice, cell_dice, ratios = [], [], []
    pixels, seconds = 0, 0.0
    true_pixel_size = config.pixel_size_um / resize
    for row in index.itertuples():
        rgb = read_image(BCCD / row.image).data
        if resize != 1.0:
            rgb = resize_rgb(rgb, resize)
        start = time.perf_counter()
        pixel_size = find_pixel_size(rgb).um_per_px if measure_pixel_size else None
        result = segment_field(rgb, config, pixel_size_um=pixel_size)
        seconds += time.perf_counter() - start
        pixels += rgb.shape[0] * rgb.shape[1]
        if pixel_size is not None:
            ratios.append(pixel_size / true_pixel_size)
        cells = result.cells
        predicted = list(zip(cells.bbox_y0, cells.bbox_x0, cells.bbox_y1, cells.bbox_x1, strict=True))
        truth = [tuple(round(v * resize) for v in box) for box in wbc_boxes(BCCD / row.boxes)]
        hits += match_boxes(predicted, truth)
        n_pred += len(predicted)
        n_true += len(truth)
        mask = np.asarray(read_image(BCCD / row.wbc_mask).data)
        mask = resize_nearest(mask[..., 0] if mask.ndim == 3 else mask, rgb.shape[:2])
        if (mask >= 64).any():
            nucleus_dice.append(dice(result.nuclei, mask >= 200))
            cell_dice.append(dice(result.labels > 0, mask >= 64))
    precision = hits / max(n_pred, 1)
    recall = hits / max(n_true, 1)
    return {
        "split": split,
        "resize": resize,
        **({"pixel_size_estimate": estimator_error(ratios)} if ratios else {}),
        "images": len(index),
        "wbc_boxes": n_true,
        "detected": n_pred,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "detection_f1_iou50": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
        "nucleus_dice": round(float(np.mean(nucleus_dice)), 4),
        "cell_dice": round(float(np.mean(cell_dice)), 4),
        "megapixels_per_second": round(pixels / 1e6 / seconds, 2),
    }


def estimator_error(ratios: list[float]) -> dict:
    """Summary of estimated / true pixel size over fields."""
    ratios = np.asarray(ratios)
    errors = np.abs(ratios - 1)
    return {
        "median_ratio_estimated_to_true": round(float(np.median(ratios)), 4),
        "ratio_p5_p95": [round(float(v), 4) for v in np.percentile(ratios, [5, 95])],
        "median_abs_error": round(float(np.median(errors)), 4),
        "fields_within_10_percent": round(float((errors <= 0.10).mean()), 4),
        "fields_within_25_percent": round(float((errors <= 0.25).mean()), 4),
    }


def red_cell_boxes(xml_path: Path, shape: tuple[int, int]) -> list[float]:
    """Side (square root of the area) of each annotated red-cell box that does not touch the border."""
    sides = []
    for item in ET.parse(xml_path).findall("object"):
        if item.findtext("name") != "RBC":
            continue
        box = item.find("bndbox")
        x0, y0, x1, y1 = (float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
        if min(x0, y0) > 2 and x1 < shape[1] - 2 and y1 < shape[0] - 2:
            sides.append(float(np.sqrt((x1 - x0) * (y1 - y0))))
    return sides


def calibrate_ruler() -> dict:
    """The red-cell ruler's constants, from the BCCD ``train`` split only.

    ``RULER_CALIBRATION`` is the median over fields of (median annotated red-cell box side) / (ruler
    diameter); the reference pixel size is 7.5 um over the median calibrated ruler diameter.
    """
    raw, ratios = [], []
    for row in bccd_rows("train").itertuples():
        rgb = read_image(BCCD / row.image).data
        diameter = red_cell_diameter(rgb, calibration=1.0)
        sides = red_cell_boxes(BCCD / row.boxes, rgb.shape[:2])
        if diameter is None:
            continue
        raw.append(diameter)
        if sides:
            ratios.append(np.median(sides) / diameter)
    calibration = float(np.median(ratios))
    return {
        "split": "train",
        "fields_measured": len(raw),
        "ruler_diameter_px_median": round(float(np.median(raw)), 2),
        "ruler_calibration": round(calibration, 4),
        "reference_pixel_size_um": round(RED_CELL_DIAMETER_UM / (calibration * float(np.median(raw))), 5),
    }


def scales_figures(config: SegmentationConfig, limit: int | None = None) -> dict:
    """BCCD ``val`` resized to 0.5x, 1x and 2x, segmented without ``--scale``.

    ``measured``: the pixel size is measured on the red cells (what ``segment`` does now);
    ``assumed_reference``: the image is taken to be at BCCD's pixel size (what ``segment`` did before).
    """
    return {
        "measured": [
            evaluate_bccd("val", config, limit, resize=resize, measure_pixel_size=True) for resize in SCALES
        ],
        "assumed_reference": [
            evaluate_bccd("val", config, limit, resize=resize) for resize in SCALES if resize != 1.0
        ],
    }


def stain_reference() -> dict:
    """Reference stains for :mod:`napari_hematology.core.cells.stain`, from the BCCD ``train`` split only.

    Each field's two stain vectors are estimated; the reference is their median over fields, renormalised
    to unit length.
    """
    estimates = []
    for row in bccd_rows("train").itertuples():
        rgb = read_image(BCCD / row.image).data
        vectors = estimate_stains(stained_od(rgb, od_tables(estimate_white(rgb))))
        if vectors is not None:
            estimates.append(vectors)
    reference = np.median(estimates, axis=0).astype(float)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    stains = np.round(reference, 3).tolist()
    return {"split": "train", "fields_estimated": len(estimates), "stains_rgb_od": stains}


def stain_normalisation_figures(limit: int | None = None) -> dict:
    """Segmentation without and with stain normalisation: single-cell sources at their known scale, BCCD val.

    The default is chosen on :data:`VALIDATION_SOURCE` alone (whole-cell Dice), provided BCCD ``val``
    detection F1 stays >= 0.95; the other sources are reported.
    """
    sets = single_cell_sets()
    figures = {}
    for switch in (False, True):
        config = SegmentationConfig(stain_normalisation=switch)
        figures["on" if switch else "off"] = {
            "single_cells": [
                evaluate_single_cells(
                    name, pairs, config, config.pixel_size_um / SINGLE_CELL_SCALE[name], limit
                )
                for name, pairs in sets.items()
            ],
            "bccd_val": evaluate_bccd("val", config, limit),
        }
    validation = {
        switch: next(r for r in figures[switch]["single_cells"] if r["dataset"] == VALIDATION_SOURCE)
        for switch in ("off", "on")
    }
    adopt = (
        validation["on"]["cell_dice"] > validation["off"]["cell_dice"]
        and figures["on"]["bccd_val"]["detection_f1_iou50"] >= 0.95
    )
    return {"validation_source": VALIDATION_SOURCE, "adopt": adopt, **figures}


def single_cell_sets() -> dict[str, list[tuple[Path, Path]]]:
    """(image, mask) pairs of the single-cell sets with nucleus and cytoplasm masks."""
    all_idb2 = DATA / "single_cells" / "all_idb2"
    return {
        "wbc_seg/dataset1": [
            (p, p.with_suffix(".png")) for p in sorted((WBC_SEG / "dataset1").glob("*.bmp"))
        ],
        "wbc_seg/dataset2": [
            (p, p.with_suffix(".png")) for p in sorted((WBC_SEG / "dataset2").glob("*.bmp"))
        ],
        "all_idb2": [
            (all_idb2 / row.image, all_idb2 / row.mask)
            for row in pd.read_csv(all_idb2 / "labels.csv").itertuples()
        ],
    }


def truth_masks(mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus and whole-cell masks: grey coding (nucleus 255, cytoplasm 128) or ALL-IDB2 colours."""
    mask = np.asarray(read_image(mask_path).data)
    if mask.ndim == 3 and mask.shape[-1] >= 3 and (mask[..., 0] != mask[..., 2]).any():
        red, green, blue = (mask[..., i].astype(int) for i in range(3))
        nucleus = (red < 128) & (green >= 128) & (blue >= 128)
        return nucleus, nucleus | ((red < 128) & (green < 128) & (blue >= 128))
    grey = mask[..., 0] if mask.ndim == 3 else mask
    return grey >= 200, grey >= 64


def evaluate_single_cells(
    name: str,
    pairs: list[tuple[Path, Path]],
    config: SegmentationConfig,
    pixel_size_um: float | None,
    limit: int | None = None,
    transform=None,
) -> dict:
    """Dice of nucleus and whole cell for the cell nearest the centre of each single-cell image.

    ``pixel_size_um`` None: each image's pixel size is found as ``segment`` finds it without ``--scale``
    (the red-cell ruler, else the default); how often each way was used is counted. ``transform``, when
    given, changes each image first (a shift of the stain-and-camera suite).
    """
    if limit:
        pairs = pairs[:: max(1, len(pairs) // limit)]
    nucleus_dice, cell_dice, missed, origins = [], [], 0, []
    for image_path, mask_path in pairs:
        rgb = np.asarray(read_image(image_path).data)[..., :3]
        if transform is not None:
            rgb = transform(np.ascontiguousarray(rgb))
        true_nucleus, true_cell = truth_masks(mask_path)
        pixel_size = pixel_size_um
        if pixel_size is None:
            found = find_pixel_size(rgb, name=image_path.name)
            pixel_size = found.um_per_px
            origins.append(found.source)
        result = segment_field(rgb, config, pixel_size_um=pixel_size)
        cell = _central_cell(result.labels)
        missed += cell == 0
        predicted_cell = result.labels == cell if cell else np.zeros(true_cell.shape, bool)
        nucleus_dice.append(dice(result.nuclei & predicted_cell, true_nucleus))
        cell_dice.append(dice(predicted_cell, true_cell))
    return {
        "dataset": name,
        "images": len(pairs),
        "missed": int(missed),
        "nucleus_dice": round(float(np.mean(nucleus_dice)), 4),
        "cell_dice": round(float(np.mean(cell_dice)), 4),
        **({"pixel_size_from": pd.Series(origins).value_counts().to_dict()} if origins else {}),
    }


def _central_cell(labels: np.ndarray) -> int:
    """Label of the cell nearest the image centre (0 if none)."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return 0
    centre = np.array(labels.shape) / 2
    centroids = [np.argwhere(labels == i).mean(axis=0) for i in ids]
    return int(ids[np.argmin([np.linalg.norm(c - centre) for c in centroids])])


def time_analyze(field: Path) -> float:
    """Seconds for ``analyze_paths`` on one field, end to end (classifier loading included)."""
    from napari_hematology.core.cells.batch import analyze_paths

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        analyze_paths([field], out, scheduler="synchronous")
        return time.perf_counter() - start


def build_slide(path: Path, side: int = SLIDE_SIDE) -> None:
    """Write a ``side`` x ``side`` tiled RGB TIFF made of BCCD fields, tile by tile (bounded memory)."""
    import tifffile

    fields = [read_image(p).data for p in sorted((BCCD / "images").glob("*.jpg"))[:64]]
    tile = 512

    def tiles():
        for y in range(0, side, tile):
            for x in range(0, side, tile):
                field = fields[(y // tile * 7 + x // tile) % len(fields)]
                yield np.ascontiguousarray(
                    np.pad(field, ((0, 32), (0, 0), (0, 0)), mode="reflect")[:tile, :tile]
                )

    tifffile.imwrite(
        path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib"
    )


def slide_child(path: str) -> None:
    """Analyse the big slide as ``segment`` does (lazy tiles, labels to disk); print JSON figures."""
    import torch

    from napari_hematology.core.cells.analysis import analyze_file

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir="/tmp") as out:
        start = time.perf_counter()
        summary = analyze_file(path, out)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps({"cells": summary["cells"], "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 3)})
    )


def measure_slide() -> dict:
    """Build the synthetic slide in a temporary folder and measure it in a fresh subprocess."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        path = Path(folder) / "slide.tif"
        build_slide(path)
        output = subprocess.run(
            [sys.executable, __file__, "--slide-child", str(path)], capture_output=True, text=True, check=True
        ).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    figures["side"] = SLIDE_SIDE
    figures["megapixels_per_second"] = round(SLIDE_SIDE**2 / 1e6 / figures["seconds"], 2)
    return figures


def update_results(key: str, value) -> None:
    """Replace one entry of the results file, keeping the others."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(value, indent=2))


def main() -> None:
    """Run every measurement and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, no whole-slide run")
    parser.add_argument(
        "--keep-slide", action="store_true", help="keep the recorded whole-slide run, re-measure the rest"
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--slide-only", action="store_true", help="re-measure only the whole slide, keep the other results"
    )
    only.add_argument(
        "--scales", action="store_true",
        help="only BCCD val at 0.5x, 1x and 2x with the pixel size measured on the red cells",
    )
    only.add_argument(
        "--calibrate", action="store_true", help="only the red-cell ruler's constants (BCCD train)"
    )
    only.add_argument(
        "--single-cells-found-scale", action="store_true",
        help="only the single-cell Dice with the pixel size found by the tool (no --scale)",
    )
    only.add_argument(
        "--stain-reference", action="store_true", help="only the reference stains (BCCD train)"
    )
    only.add_argument(
        "--stain-normalisation", action="store_true",
        help="only segmentation without / with stain normalisation (single-cell sources, BCCD val)",
    )
    parser.add_argument("--slide-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slide_child:
        slide_child(args.slide_child)
        return
    if args.slide_only:
        update_results("slide_20000x20000", measure_slide())
        return
    import torch

    torch.set_num_threads(1)
    limit = 20 if args.quick else None
    config = SegmentationConfig()
    if args.calibrate:
        update_results("ruler_calibration", calibrate_ruler())
        return
    if args.stain_reference:
        update_results("stain_reference", stain_reference())
        return
    if args.stain_normalisation:
        update_results("stain_normalisation", stain_normalisation_figures(limit))
        return
    if args.scales:
        update_results("bccd_val_other_magnifications", scales_figures(config, limit))
        return
    if args.single_cells_found_scale:
        sets = single_cell_sets().items()
        update_results("single_cells_pixel_size_found",
                       [evaluate_single_cells(name, pairs, config, None, limit) for name, pairs in sets])
        return
    results = {
        "config": config.__dict__,
        "ruler_calibration": calibrate_ruler(),
        "bccd": [evaluate_bccd(split, config, limit) for split in ("train", "val")],
        "bccd_val_other_magnifications": scales_figures(config, limit),
        "single_cells": [
            {
                "scale": SINGLE_CELL_SCALE[name],
                **evaluate_single_cells(
                    name, pairs, config, config.pixel_size_um / SINGLE_CELL_SCALE[name], limit
                ),
            }
            for name, pairs in single_cell_sets().items()
        ],
        "analyze_seconds_one_640x480_field": round(
            time_analyze(sorted((BCCD / "images").glob("*.jpg"))[0]), 2
        ),
    }
    if args.keep_slide and RESULTS.is_file():
        results["slide_20000x20000"] = json.loads(RESULTS.read_text())["slide_20000x20000"]
    elif not args.quick:
        results["slide_20000x20000"] = measure_slide()
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
