"""The stain trial that chose the classifier's stain recipe, on a schedule cut to fit a 2-core CPU.

Each variant of :class:`~napari_hematology.core.cells.recipe.ClassifierRecipe` is trained for 12 epochs on
at most 200 crops per source and label (plus one shifted copy of each), never on the shipped model's
held-out PBC crops, and scored on the first :data:`CHOICE_CROPS` held-out PBC crops of each class as they
are and under the stain shifts and JPEG of the suite (``choice``), and on PBC's five normal types when
PBC is left out of training (``left_out_pbc``). These crops chose the recipe: their figures are "chosen
on it". ``benchmarks/bench_front_end.py --part classifier`` reports the shipped model on the other held-out
crops, which no choice looked at.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stain_recipe.py`` (about 10 minutes per variant
and part on one core); writes ``benchmarks/results/stain_recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from napari_hematology.core.cells import shifts
from napari_hematology.core.cells.classes import BLAST, NORMAL_TYPES
from napari_hematology.core.cells.crop_batches import prepare_crop
from napari_hematology.core.cells.crops import CONTEXT, CROP_SIZE, crop_to_rgb8, read_crop
from napari_hematology.core.cells.recipe import ClassifierRecipe, train_classifier
from napari_hematology.core.cells.training_data import (
    SHIFTED_MARK,
    CellSet,
    _cell_set,
    cap_per_label,
    held_out_crops,
    list_training_crops,
    read_prepared_crops,
    shifted_crop,
    synthetic_cell_set,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "stain_recipe.json"
CHOICE_CROPS = 40
CAP = 200
EPOCHS = 12
CONDITIONS = ("none", "pale stains", "dark purple red cells", "weak nuclear stain", "strong nuclear stain",
              "jpeg 25")
VARIANTS = {
    "previous (colour statistics, shifted copies)": {"standardise_stains": False, "stain_amounts": 0.0},
    "no colour statistics + online stain amounts 0.5": {"colour_statistics": False,
                                                        "standardise_stains": False, "stain_amounts": 0.5},
    "online stain amounts 0.3": {"standardise_stains": False, "stain_amounts": 0.3},
    "online stain amounts 0.5": {"standardise_stains": False, "stain_amounts": 0.5},
    "standardised stains": {"standardise_stains": True, "stain_amounts": 0.0},
    "standardised stains + online stain amounts 0.3 (chosen)": {"standardise_stains": True,
                                                                "stain_amounts": 0.3},
}


def training_cells(size: int) -> CellSet:
    """At most CAP crops per source and label, none of the held-out PBC crops, and one shifted copy each."""
    table = list_training_crops(DATA)
    table = cap_per_label(table[~table["file"].isin(held_out_crops(DATA)["file"])], CAP, 0)
    files = [Path(file) for file in table["file"]]
    crops = read_prepared_crops(files, size, CONTEXT)
    shifted = read_prepared_crops(files, size, CONTEXT, transform=partial(shifted_crop, seed=1))
    cells = _cell_set(table, crops).concat(_cell_set(table, shifted, f"{SHIFTED_MARK}1"))
    return cells.concat(synthetic_cell_set(150, size, 0))


def choice_crops(size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and normalised crops, per condition, of the first CHOICE_CROPS held-out PBC crops per class."""
    table = held_out_crops(DATA).groupby("label").head(CHOICE_CROPS).reset_index(drop=True)
    originals = [read_crop(path) for path in table["file"]]
    suite = {shift.name: shift.apply for shift in shifts.shift_suite()} | {"none": lambda rgb: rgb}
    prepared = {
        name: np.stack([prepare_crop(crop_to_rgb8(suite[name](rgb), "crop"), "crop", size, CONTEXT)[0]
                        for rgb in originals])
        for name in CONDITIONS
    }
    return table["label"].to_numpy(dtype=object), prepared


def recipe_of(settings: dict, size: int) -> ClassifierRecipe:
    recipe = ClassifierRecipe(per_label_cap=CAP, crop_size=size, **settings)
    recipe.train.epochs = EPOCHS
    return recipe


def score(classifier, labels: np.ndarray, prepared: dict[str, np.ndarray], only: np.ndarray | None) -> dict:
    keep = np.ones(len(labels), bool) if only is None else only
    result = {}
    for name, crops in prepared.items():
        called = classifier.predict_prepared(crops[keep])["label"].to_numpy(dtype=object)
        result[name] = {"balanced_accuracy": round(float(balanced_accuracy_score(labels[keep], called)), 4),
                        "called_blast": round(float((called == BLAST).mean()), 4)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parts = ["choice", "left_out_pbc"]
    parser.add_argument("--part", nargs="+", default=parts, choices=parts)
    parser.add_argument("--crop-size", type=int, default=CROP_SIZE,
                        help=f"side of the normalised crops (the shipped recipe: {CROP_SIZE})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = training_cells(args.crop_size)
    labels, prepared = choice_crops(args.crop_size)
    normal = np.isin(labels, NORMAL_TYPES)
    for name in args.variants:
        for part in args.part:
            train = cells if part == "choice" else cells.subset(np.where(cells.sources != "pbc")[0])
            started = time.perf_counter()
            classifier = train_classifier(train, recipe_of(VARIANTS[name], args.crop_size))
            conditions = prepared
            if part != "choice":
                conditions = {key: prepared[key] for key in ("none", "pale stains")}
            figures = score(classifier, labels, conditions, None if part == "choice" else normal)
            results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
            key = name if args.crop_size == CROP_SIZE else f"{name} at {args.crop_size} px"
            results.setdefault(part, {})[key] = {"settings": VARIANTS[name], **figures,
                                                  "seconds": round(time.perf_counter() - started)}
            results["label"] = ("chosen on it: these crops chose the stain recipe (crops never trained on; "
                                f"{EPOCHS} epochs, at most {CAP} crops per source and label)")
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            print(part, key, json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
