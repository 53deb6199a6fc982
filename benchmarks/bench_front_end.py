"""Benchmark of the front end on labs the project does not have: the stain-and-camera shift suite.

Parts (``--part``, all by default), written into ``benchmarks/results/front_end.json``:

- ``normaliser``: the crop normaliser's nucleus box against the nucleus masks of ALL-IDB2 and both
  wbc_seg sets, on the crops as they are and under every shift of
  :func:`napari_hematology.core.cells.shifts.shift_suite` (mean IoU, share with IoU >= 0.8, share whose
  nucleus was not found). Chosen on it: the locator's constants were picked on these unshifted crops;
  the shifts were not used for any choice.
- ``classifier``: the shipped classifier on the PBC crops it never trained on (the recipe keeps 600 per
  class; PBC has 750), as they are and under every shift: balanced accuracy over PBC's classes and the
  share of normal cells called blast. The first :data:`CHOICE_CROPS` held-out crops of each class chose
  the stain recipe (docs/cell_classifier.md has the trial); the other 110 per class report, and
  nothing was chosen on them. ``--model DIR --key NAME`` scores other weights on the same crops.
- ``model``: what training recorded in the classifier folder (crops per source, seconds, final loss).
- ``pixel_size``: the red-cell ruler on every BCCD field (one camera) alone, and the camera consensus
  that ``analyze`` uses for a batch: share of fields whose own estimate is within 15% of the consensus,
  and the fields that are not. The ruler's one constant was calibrated on BCCD train (chosen on it).
- ``fields``: white-cell detection F1 on BCCD val fields under the stain and background shifts, and
  under a stress stain that makes red cells purple, with the per-field nucleus threshold on and off
  (held out: the adaptive threshold was chosen on BCCD train fields under the same stress stain).

- ``threshold_choice``: the per-field threshold (on or off) chosen leave-one-source-out over BCCD val
  and the three mask sources, each scored as the mean over the stain and background shifts and the
  stress stain (``--limit`` images per mask source, 100 by default); each left-out source is held out
  from its own choice.
- ``mask_sources``: whole-cell Dice on the mask sources of other labs (ALL-IDB2, both wbc_seg sets) at
  their known scale, per-field threshold on and off (held out from that choice).

Run: ``.venv/bin/python benchmarks/bench_front_end.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from napari_hematology.core.cells import shifts
from napari_hematology.core.cells.classes import BLAST
from napari_hematology.core.cells.classifier import load_classifier
from napari_hematology.core.cells.crops import (
    LOCATE_SIZE,
    NO_NUCLEUS,
    apply_gain,
    crop_to_rgb8,
    locate_nucleus,
    read_crop,
    white_gain,
)
from napari_hematology.core.cells.magnification import CONSENSUS_TOLERANCE, camera_consensus, find_pixel_size
from napari_hematology.core.cells.segmentation import SegmentationConfig, segment_field
from napari_hematology.core.cells.training_data import held_out_crops
from napari_hematology.core.io import read_image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", ROOT.parent / "shared" / "data"))
BCCD = DATA / "smear_fields" / "bccd"
CHOICE_CROPS = 40  # held-out PBC crops per class that chose the stain recipe: not reported on
RESULTS = ROOT / "benchmarks" / "results" / "front_end.json"
STRESS_STAIN = {"pink": 1.8, "pink_hue": 0.6}  # red cells as purple as a nucleus is in some stains


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def masked_crops() -> list[tuple[str, Path, np.ndarray]]:
    """(source, crop file, nucleus mask) of every crop with a nucleus mask (bench_segmentation's sets)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_segmentation import single_cell_sets, truth_masks

    items = [(source, image, truth_masks(mask)[0])
             for source, pairs in single_cell_sets().items() for image, mask in pairs]
    return [item for item in items if item[2].any()]


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    return rows.min(), cols.min(), rows.max() + 1.0, cols.max() + 1.0


def box_iou(a, b) -> float:
    height = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = height * width
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def located_box(rgb: np.ndarray) -> tuple[tuple[float, float, float, float], bool]:
    """The normaliser's nucleus box in the crop's pixels, and whether the nucleus was found."""
    image = Image.fromarray(rgb)
    scale = LOCATE_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    thumbnail = np.asarray(image.resize(size, Image.BILINEAR))
    nucleus = locate_nucleus(apply_gain(thumbnail, white_gain(thumbnail)))
    half = nucleus.extent / 2
    box = (nucleus.centre_y - half, nucleus.centre_x - half, nucleus.centre_y + half, nucleus.centre_x + half)
    return tuple(value / scale for value in box), nucleus.found


def scaled_box(box, shape: tuple[int, int], factor: float):
    """Where a box lands after :func:`shifts.rescale` by ``factor`` (about the crop's centre)."""
    centre_y, centre_x = shape[0] / 2, shape[1] / 2
    y0, x0, y1, x1 = box
    return ((y0 - centre_y) * factor + centre_y, (x0 - centre_x) * factor + centre_x,
            (y1 - centre_y) * factor + centre_y, (x1 - centre_x) * factor + centre_x)


SCALE_OF = {"cell 0.7x": 0.7, "cell 1.4x": 1.4}


def normaliser_figures() -> dict:
    items = masked_crops()
    suite = [shifts.Shift("none", "none", lambda rgb: rgb), *shifts.shift_suite()]
    result: dict = {}
    for shift in suite:
        rows = []
        for source, path, nucleus in items:
            rgb = read_crop(path)
            truth = scaled_box(box_of(nucleus), rgb.shape[:2], SCALE_OF.get(shift.name, 1.0))
            box, found = located_box(shift.apply(rgb))
            rows.append({"source": source, "iou": box_iou(box, truth), "found": found})
        table = pd.DataFrame(rows)
        result[shift.name] = {
            source: {"crops": len(group), "mean_iou": round(float(group["iou"].mean()), 4),
                     "share_iou_0_8": round(float((group["iou"] >= 0.8).mean()), 4),
                     "nucleus_not_found": round(float((~group["found"]).mean()), 4)}
            for source, group in table.groupby("source")
        } | {"all": {"mean_iou": round(float(table["iou"].mean()), 4)}}
        log(f"normaliser {shift.name}: mean IoU {table['iou'].mean():.3f}")
    shifted = [value["all"]["mean_iou"] for name, value in result.items() if name != "none"]
    return {"label": "chosen on it (locator constants picked on these unshifted crops; shifts unused)",
            "per_shift": result, "lowest_shifted_mean_iou": min(shifted)}


def reported_crops(data: Path = DATA) -> pd.DataFrame:
    """The PBC crops the shipped classifier never trained on, past the first CHOICE_CROPS per class."""
    cells = held_out_crops(data)
    cells = cells.groupby("label").apply(lambda group: group.iloc[CHOICE_CROPS:], include_groups=False)
    return cells.reset_index(level=0).reset_index(drop=True)


def classifier_figures(model_dir: Path | None, per_class: int | None) -> dict:
    cells = reported_crops()
    if per_class:
        cells = cells.groupby("label").head(per_class).reset_index(drop=True)
    classifier = load_classifier(model_dir, "cpu")
    originals = [read_crop(path) for path in cells["file"]]
    suite = [shifts.Shift("none", "none", lambda rgb: rgb), *shifts.shift_suite()]
    result = {}
    for shift in suite:
        crops = [crop_to_rgb8(shift.apply(rgb), "crop") for rgb in originals]
        table = classifier.predict(crops)
        called = table["label"].to_numpy(dtype=object)
        result[shift.name] = {
            "balanced_accuracy": round(float(balanced_accuracy_score(cells["label"], called)), 4),
            "called_blast": round(float((called == BLAST).mean()), 4),
            "nucleus_not_found": round(float((table["quality"] == NO_NUCLEUS).mean()), 4),
        }
        log(f"classifier {shift.name}: {result[shift.name]}")
    unshifted = result["none"]["balanced_accuracy"]
    for value in result.values():
        value["drop"] = round(unshifted - value["balanced_accuracy"], 4)
    worst = min(value["balanced_accuracy"] for name, value in result.items() if name != "none")
    return {"label": f"held out (PBC crops never trained on, past the first {CHOICE_CROPS} per class that "
                     "chose the stain recipe; nothing chosen on them)",
            "crops": len(cells), "per_class": int(cells["label"].value_counts().min()),
            "model": str(model_dir or "shipped"), "per_shift": result,
            "largest_drop": round(unshifted - worst, 4)}


def model_figures(model_dir: Path | None) -> dict:
    """What training recorded in the model folder: crops per source, seconds, final loss."""
    metadata = load_classifier(model_dir, "cpu").metadata
    keys = ("training_crops", "training_seconds", "final_loss", "classes")
    return {"model": str(model_dir or "shipped"), **{key: metadata.get(key) for key in keys},
            "recipe": {key: metadata.get("recipe", {}).get(key)
                       for key in ("per_label_cap", "shifted_copies", "background_crops")},
            "epochs": metadata.get("recipe", {}).get("train", {}).get("epochs")}


def pixel_size_figures() -> dict:
    index = pd.read_csv(BCCD / "index.csv")
    measured = {}
    for row in index.itertuples():
        rgb = np.asarray(read_image(BCCD / row.image).data)
        measured[row.image] = (find_pixel_size(rgb, name=row.image), rgb.shape[:2])
    _, records = camera_consensus(measured)
    (camera,) = records
    own = np.array([size.um_per_px for size, _ in measured.values()])
    within = np.abs(own / camera["um_per_px"] - 1) <= CONSENSUS_TOLERANCE
    split = index.set_index("image").loc[list(measured), "split"].to_numpy()
    by_split = {name: round(float(within[split == name].mean()), 4) for name in ("train", "val")}
    return {"label": "chosen on it for train (ruler calibrated and its estimator picked on BCCD train); "
                     "val held out",
            "fields": len(own), "consensus_um_per_px": camera["um_per_px"], "tolerance": CONSENSUS_TOLERANCE,
            "share_of_fields_alone_within_15_percent": round(float(within.mean()), 4),
            "share_within_15_percent_by_split": by_split,
            "fields_used_at_consensus": len(own),
            "disagreeing": camera["disagreeing"]}


def field_figures(limit: int | None) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_segmentation import bccd_rows, match_boxes, wbc_boxes

    rows = bccd_rows("val", limit)
    stains = {s.name: s.apply for s in shifts.shift_suite() if s.family in ("stain", "background")}
    stains = {"none": lambda rgb: rgb, **stains,
              "stress: purple red cells": lambda rgb: shifts.restain(rgb, **STRESS_STAIN)}
    result = {}
    for adaptive in (True, False):
        config = replace(SegmentationConfig(), adaptive_threshold=adaptive)
        for name, shift in stains.items():
            hits = predicted = truth = 0
            for row in rows.itertuples():
                rgb = shift(np.asarray(read_image(BCCD / row.image).data))
                cells = segment_field(rgb, config).cells
                boxes = list(zip(cells.bbox_y0, cells.bbox_x0, cells.bbox_y1, cells.bbox_x1, strict=True))
                true_boxes = wbc_boxes(BCCD / row.boxes)
                hits += match_boxes(boxes, true_boxes)
                predicted += len(boxes)
                truth += len(true_boxes)
            precision, recall = hits / max(predicted, 1), hits / max(truth, 1)
            f1 = 2 * precision * recall / max(precision + recall, 1e-9)
            key = f"{'adaptive' if adaptive else 'fixed'} threshold"
            result.setdefault(key, {})[name] = {"detection_f1_iou50": round(f1, 4), "reported": predicted,
                                                "white_cells": truth}
            log(f"fields {key} {name}: F1 {f1:.3f} ({predicted} reported, {truth} true)")
    return {"label": "held out (BCCD val; the adaptive threshold was chosen on BCCD train)",
            "fields": len(rows), **result}


def mask_source_figures() -> dict:
    """Whole-cell Dice of the other labs' mask sources at their known scale, per-field threshold on and off.

    The per-field threshold was chosen on BCCD train; these sources had no part in that choice.
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_segmentation import SINGLE_CELL_SCALE, evaluate_single_cells, single_cell_sets

    result = {"label": "held out from the per-field threshold's choice (made on BCCD train)"}
    for adaptive in (True, False):
        config = replace(SegmentationConfig(), adaptive_threshold=adaptive)
        key = f"{'adaptive' if adaptive else 'fixed'} threshold"
        result[key] = [
            evaluate_single_cells(name, pairs, config, config.pixel_size_um / SINGLE_CELL_SCALE[name], None)
            for name, pairs in single_cell_sets().items()
        ]
        log(f"mask sources {key}: {result[key]}")
    return result


def threshold_choice_figures(limit: int) -> dict:
    """The per-field threshold chosen leave-one-source-out, over stain shifts, on every source with truth.

    Each source's score for each candidate (per-field threshold on or off) is its mean over the stains
    as they are, the suite's stain and background shifts and the stress stain: whole-cell Dice on the
    mask sources (at most ``limit`` images each, at their known scale), detection F1 on the BCCD val
    fields (from the ``fields`` part, which must have run). With one source left out, the candidate with
    the higher mean over the other sources is chosen, and the left-out source's score under that choice
    is reported (held out from that choice).
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_segmentation import SINGLE_CELL_SCALE, evaluate_single_cells, single_cell_sets

    stains = {s.name: s.apply for s in shifts.shift_suite() if s.family in ("stain", "background")}
    stress = {"stress: purple red cells": lambda rgb: shifts.restain(rgb, **STRESS_STAIN)}
    stains = {"none": None, **stains, **stress}
    fields = json.loads(RESULTS.read_text())["fields"]
    scores: dict[str, dict[str, float]] = {}
    for adaptive in (True, False):
        key = f"{'adaptive' if adaptive else 'fixed'} threshold"
        config = replace(SegmentationConfig(), adaptive_threshold=adaptive)
        per_source = {"bccd val (detection F1)": float(np.mean(
            [fields[key][name]["detection_f1_iou50"] for name in stains]))}
        for name, pairs in single_cell_sets().items():
            scale = config.pixel_size_um / SINGLE_CELL_SCALE[name]
            dices = [evaluate_single_cells(name, pairs, config, scale, limit, shift)["cell_dice"]
                     for shift in stains.values()]
            per_source[f"{name} (cell Dice)"] = float(np.mean(dices))
            log(f"threshold choice {key} {name}: {dices}")
        scores[key] = {source: round(value, 4) for source, value in per_source.items()}
    sources = list(next(iter(scores.values())))
    choice = {}
    for left_out in sources:
        others = [source for source in sources if source != left_out]
        chosen = max(scores, key=lambda candidate: np.mean([scores[candidate][s] for s in others]))
        choice[left_out] = {"chosen": chosen, "score": scores[chosen][left_out],
                            "other_candidate": scores[next(c for c in scores if c != chosen)][left_out]}
    return {"label": "each left-out source is held out from its choice; conditions: "
                     + ", ".join(stains), "images_per_mask_source": limit, "scores": scores,
            "leave_one_source_out": choice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ("normaliser", "classifier", "model", "pixel_size", "fields", "mask_sources", "threshold_choice")
    parser.add_argument("--part", choices=parts, nargs="*")
    parser.add_argument("--model", type=Path, default=None, help="classifier folder (default: shipped)")
    parser.add_argument("--limit", type=int, default=None, help="about this many BCCD val fields")
    parser.add_argument("--per-class", type=int, default=None,
                        help=f"held-out PBC crops per class (all: {150 - CHOICE_CROPS})")
    parser.add_argument("--key", default=None, help="JSON key of the classifier part (default: classifier)")
    args = parser.parse_args()
    parts = args.part or list(parts)
    runners = {
        "normaliser": normaliser_figures,
        "classifier": lambda: classifier_figures(args.model, args.per_class),
        "model": lambda: model_figures(args.model),
        "pixel_size": pixel_size_figures,
        "fields": lambda: field_figures(args.limit),
        "mask_sources": mask_source_figures,
        "threshold_choice": lambda: threshold_choice_figures(args.limit or 100),
    }
    for part in parts:
        value = runners[part]()
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}  # other runs may have written
        results[args.key if part == "classifier" and args.key else part] = value
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(value, indent=2)[:4000])


if __name__ == "__main__":
    main()
