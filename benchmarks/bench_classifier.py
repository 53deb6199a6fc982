"""Cell classifier benchmark: cross-validated accuracy of the default recipe, and crops per second.

    .venv/bin/python benchmarks/bench_classifier.py [--data ../shared/data] [--folds 5] [--threads 2]

``--skip-cv`` or ``--skip-speed`` run one part and keep the other part's figures already in the JSON.

Writes benchmarks/results/classifier.json:
- blast vs normal on single_cells/all_idb2, 5-fold cross-validated, with the default recipe of
  train-classifier (ClassifierRecipe defaults); the other sources are split into the same folds, which
  also gives held-out white-cell type accuracy on bccd_crops, wbc_seg and pbc (same-source figures;
  benchmarks/bench_any_lab.py measures sources never seen);
- crops/s classified end to end (files read from disk, normalised, classified) with the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from napari_hematology.core.cells.classes import BLAST, NORMAL_TYPES
from napari_hematology.core.cells.classify_files import classify_images
from napari_hematology.core.cells.recipe import ClassifierRecipe, cross_validate
from napari_hematology.core.cells.training_data import NORMAL, list_training_crops, load_cell_set

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "classifier.json"
TYPES = list(NORMAL_TYPES)


def blast_metrics(rows: pd.DataFrame) -> dict:
    """Blast vs normal accuracy (predicted label) and ROC AUC (blast probability)."""
    truth = rows["truth"] == BLAST
    predicted = rows["label"] == BLAST
    per_fold = [float(((g["label"] == BLAST) == (g["truth"] == BLAST)).mean())
                for _, g in rows.groupby("fold")]
    return {
        "n": len(rows),
        "accuracy": round(float((truth == predicted).mean()), 4),
        "accuracy_per_fold": [round(value, 4) for value in per_fold],
        "balanced_accuracy": round(float((predicted[truth].mean() + (~predicted[~truth]).mean()) / 2), 4),
        "roc_auc": round(float(roc_auc_score(truth, rows["blast_probability"])), 4),
        "normal_called_lymphocyte": round(float((rows.loc[~truth, "label"] == "lymphocyte").mean()), 4),
    }


def type_metrics(rows: pd.DataFrame) -> dict:
    """White-cell type accuracy among the five normal types, and how often a normal cell is called blast."""
    type_columns = [f"prob_{name}" for name in TYPES]
    best_type = np.asarray(TYPES)[rows[type_columns].to_numpy().argmax(axis=1)]
    correct = best_type == rows["truth"].to_numpy()
    per_class = {name: round(float(correct[rows["truth"].to_numpy() == name].mean()), 4)
                 for name in TYPES if (rows["truth"] == name).any()}
    return {
        "n": len(rows),
        "type_accuracy": round(float(correct.mean()), 4),
        "type_balanced_accuracy": round(float(np.mean(list(per_class.values()))), 4),
        "type_accuracy_per_class": per_class,
        "label_accuracy": round(float((rows["label"] == rows["truth"]).mean()), 4),
        "called_blast": round(float((rows["label"] == BLAST).mean()), 4),
    }


def log_epochs(done: int, total: int, message: str = "") -> None:
    """Print one line per finished training epoch, for runs in the background."""
    if total and done % max(1, total // 10) == 0:
        print(f"{time.strftime('%H:%M:%S')} step {done}/{total} {message}", file=sys.stderr, flush=True)


def measure_speed(data: Path, repeats: int, threads: int) -> dict:
    """Crops per second, end to end (model load, read, normalise, classify) with the shipped weights.

    One ``classify_images`` call over every training crop file listed ``repeats`` times, as a folder of a
    few thousand crops would be classified.
    """
    import torch

    torch.set_num_threads(threads)
    files = list_training_crops(data)["file"].tolist() * repeats
    classify_images(files[:64])  # warm up: first-call allocations
    started = time.perf_counter()
    classify_images(files)
    seconds = time.perf_counter() - started
    return {"crops": len(files), "threads": threads, "seconds": round(seconds, 2),
            "crops_per_second": round(len(files) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the speed test")
    parser.add_argument("--train-threads", type=int, default=2, help="CPU threads per CV training")
    parser.add_argument("--epochs", type=int, default=None, help="override (not the default recipe)")
    parser.add_argument("--backbone", default=None, help="override (not the default recipe)")
    parser.add_argument("--speed-repeats", type=int, default=4)
    parser.add_argument("--skip-cv", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.train_threads)
    recipe = ClassifierRecipe()
    if args.backbone:
        recipe.backbone = args.backbone
    if args.epochs:
        recipe.train = replace(recipe.train, epochs=args.epochs)
    kept = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "recipe": asdict(recipe),
        "default_recipe": recipe == ClassifierRecipe(),
    }
    if not args.skip_cv:
        started = time.perf_counter()
        cells = load_cell_set(args.data, recipe)
        predictions = cross_validate(cells, recipe, folds=args.folds, progress=log_epochs)
        result["cross_validation"] = {
            "folds": args.folds,
            "seconds": round(time.perf_counter() - started, 1),
            "all_idb2_blast_vs_normal": blast_metrics(predictions[predictions["source"] == "all_idb2"]),
            "bccd_crops_types": type_metrics(predictions[predictions["source"] == "bccd_crops"]),
            "wbc_seg_types": type_metrics(predictions[predictions["source"].str.startswith("wbc_seg")]),
            "pbc_types": type_metrics(predictions[(predictions["source"] == "pbc")
                                                  & predictions["truth"].isin(TYPES)]),
        }
        normal = predictions[(predictions["source"] == "all_idb2") & (predictions["truth"] == NORMAL)]
        result["cross_validation"]["all_idb2_normal_called_as"] = {
            str(k): int(v) for k, v in normal["label"].value_counts().items()}
        predictions.to_csv(args.out.with_suffix(".predictions.csv"), index=False)
    else:
        result["cross_validation"] = kept.get("cross_validation")
    if args.skip_speed:
        result["speed_end_to_end"] = kept.get("speed_end_to_end")
    else:
        result["speed_end_to_end"] = measure_speed(args.data, args.speed_repeats, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
