"""Label-noise benchmark: detection of injected flips, robust training, real double labels, store throughput.

Run: ``.venv/bin/python benchmarks/bench_label_noise.py [--seeds 5] [--actions 10000]``
Writes ``benchmarks/results/label_noise.json``. Real data from ``../shared/data`` (or
$NAPARI_HEMATOLOGY_DATA); all numbers on CPU with one torch thread.

1. 20% class-dependent noise (labels of confusable pairs swapped) on ALL-IDB2 (blast <-> normal), WBC-seg and
   BCCD crops (neutrophil <-> eosinophil, lymphocyte <-> monocyte), 5 seeds: AUROC of the issue score for
   the flipped cells and precision at recall >= 0.70 (issue issue-5 targets: >= 0.90 and >= 0.80).
2. Accuracy on clean held-out cells (30%) after training on noisy labels with plain CE, GCE, SCE, small-loss
   selection and co-teaching, after removing or correcting flagged labels, and with clean labels.
3. Cohen's kappa and confusion of the two SCEMILA labels through ``labels import`` + ``labels agreement``.
4. Two processes writing label actions to one project at once: actions lost, actions per second.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "label_noise.json"
NOISE = 0.2
MIN_CLASS = 10  # basophils (3-4 cells) cannot be split into folds and a test set
WBC_NAMES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
DATASETS = {
    "all_idb2": [("blast", "normal")],
    "wbc_seg": [("neutrophil", "eosinophil"), ("lymphocyte", "monocyte")],
    "bccd_crops": [("Neutrophil", "Eosinophil"), ("Lymphocyte", "Monocyte")],
}
TRAINING = {
    "noisy_ce": "ce",
    "gce": "gce",
    "sce": "sce",
    "small_loss": "small_loss",
    "coteaching": "coteaching",
}


def load_cells(name: str) -> tuple[list[Path], np.ndarray]:
    """Crop paths and labels of one single-cell dataset, without classes of fewer than MIN_CLASS cells."""
    paths, labels = _all_cells(name)
    names, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, names[counts >= MIN_CLASS])
    return [path for path, kept in zip(paths, keep, strict=True) if kept], labels[keep]


def _all_cells(name: str) -> tuple[list[Path], np.ndarray]:
    root = DATA / "single_cells" / name
    if name == "all_idb2":
        table = pd.read_csv(root / "labels.csv")
        return [root / path for path in table["image"]], table["label"].to_numpy(dtype=object)
    if name == "bccd_crops":
        paths = sorted((root / "images").glob("*/*.jpg"))
        return paths, np.array([path.parent.name for path in paths], dtype=object)
    paths, labels = [], []
    for subset in ("dataset1", "dataset2"):
        table = pd.read_csv(root / f"{subset}_labels.csv")
        for cell, code in zip(table.iloc[:, 0], table.iloc[:, 1], strict=True):
            paths.append(root / subset / f"{int(cell):03d}.bmp")
            labels.append(WBC_NAMES[int(code)])
    return paths, np.array(labels, dtype=object)


def inject_noise(labels: np.ndarray, pairs, rng) -> tuple[np.ndarray, np.ndarray]:
    """Swap the labels of 20% of each class of each confusable pair; returns noisy labels and flip mask."""
    noisy, flipped = labels.copy(), np.zeros(len(labels), dtype=bool)
    for first, second in pairs:
        for source, target in ((first, second), (second, first)):
            members = np.flatnonzero(labels == source)
            chosen = rng.choice(members, int(round(NOISE * len(members))), replace=False)
            noisy[chosen], flipped[chosen] = target, True
    return noisy, flipped


def precision_at_recall(flipped: np.ndarray, scores: np.ndarray, recall: float = 0.70) -> float:
    """Precision of the shortest top-of-ranking list that reaches ``recall`` of the flipped cells."""
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(flipped[order])
    reach = int(np.argmax(hits >= recall * flipped.sum()))
    return float(hits[reach] / (reach + 1))


def detection(crops, labels, pairs, seed, config) -> dict:
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    from napari_hematology.core.label_issues import find_label_issues_in_crops

    noisy, flipped = inject_noise(labels, pairs, np.random.default_rng(seed))
    issues = find_label_issues_in_crops(crops, list(noisy), replace(config, seed=seed))
    scores, flagged = issues["issue_score"].to_numpy(), issues["is_issue"].to_numpy()
    fixed = issues["suggested"].to_numpy()[flipped] == labels[flipped]
    return {
        "auroc": float(roc_auc_score(flipped, scores)),
        "precision_at_recall_0.70": precision_at_recall(flipped, scores),
        "flagged_precision": float(flipped[flagged].mean()) if flagged.any() else 0.0,
        "flagged_recall": float(flagged[flipped].mean()),
        "suggestion_correct_on_flipped": float(fixed.mean()),
    }


def _accuracy(train_x, train_y, test_x, test_y, config) -> float:
    from napari_hematology.core.label_issues import encode_labels, fit_classifier, predict_probabilities

    codes, classes = encode_labels(list(train_y))
    model, standardize = fit_classifier(train_x, codes, len(classes), config)
    predicted = np.asarray(classes, dtype=object)[predict_probabilities(model, standardize, test_x).argmax(1)]
    return float((predicted == test_y).mean())


def accuracies(crops, labels, pairs, seed, config) -> dict:
    from dataclasses import replace

    from sklearn.model_selection import train_test_split

    from napari_hematology.core.label_issues import find_label_issues_in_crops

    config = replace(config, seed=seed)
    rows = np.arange(len(labels))
    train_rows, test_rows = train_test_split(rows, test_size=0.3, stratify=labels, random_state=seed)
    clean = labels[train_rows]
    noisy, _ = inject_noise(clean, pairs, np.random.default_rng(seed))
    train_x, test_x, test_y = crops[train_rows], crops[test_rows], labels[test_rows]
    result = {
        name: _accuracy(train_x, noisy, test_x, test_y, replace(config, loss=loss))
        for name, loss in TRAINING.items()
    }
    plain = replace(config, loss="ce")
    result["clean_ce"] = _accuracy(train_x, clean, test_x, test_y, plain)
    issues = find_label_issues_in_crops(train_x, list(noisy), config)
    keep = ~issues["is_issue"].to_numpy()
    result["removed_flagged"] = _accuracy(train_x[keep], noisy[keep], test_x, test_y, plain)
    corrected = np.where(keep, noisy, issues["suggested"].to_numpy(dtype=object))
    result["corrected_flagged"] = _accuracy(train_x, corrected, test_x, test_y, plain)
    return result


def summarise(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {
        key: {
            "mean": float(np.mean([run[key] for run in runs])),
            "std": float(np.std([run[key] for run in runs])),
        }
        for key in keys
    }


def gap_closed(accuracy: dict) -> dict:
    noisy, clean = accuracy["noisy_ce"]["mean"], accuracy["clean_ce"]["mean"]
    gap = clean - noisy
    names = [name for name in accuracy if name not in ("noisy_ce", "clean_ce")]
    return {name: (accuracy[name]["mean"] - noisy) / gap if gap > 0 else None for name in names}


def bench_dataset(name: str, seeds: int) -> dict:
    """Detection and robust-training figures of one dataset (one torch thread)."""
    import torch

    from napari_hematology.core.cell_features import read_crops
    from napari_hematology.core.label_issues import IssueConfig

    torch.set_num_threads(1)
    config = IssueConfig(device="cpu")
    started = time.perf_counter()
    paths, labels = load_cells(name)
    crops = read_crops(paths, config.crop_size)
    found = [detection(crops, labels, DATASETS[name], seed, config) for seed in range(seeds)]
    detected = time.perf_counter() - started
    trained = [accuracies(crops, labels, DATASETS[name], seed, config) for seed in range(seeds)]
    accuracy = summarise(trained)
    result = {
        "cells": len(labels),
        "noisy_pairs": DATASETS[name],
        "detection": summarise(found),
        "accuracy_on_clean_test": accuracy,
        "gap_closed": gap_closed(accuracy),
        "seconds_detection": round(detected, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(name, json.dumps(result["detection"]), flush=True)
    return result


def bench_detection_and_training(seeds: int, workers: int) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    # Not multiprocessing.Pool: its daemonic workers cannot start cleanlab's own worker processes.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = list(pool.map(bench_dataset, DATASETS, [seeds] * len(DATASETS)))
    return dict(zip(DATASETS, results, strict=True))


def bench_agreement(workdir: Path) -> dict:
    from napari_hematology.cli import main

    project, summary = workdir / "scemila.sqlite", workdir / "agreement.json"
    confusion = workdir / "confusion.csv"
    table = DATA / "tables" / "scemila_double_labels.csv"
    common = ["--project", str(project)]
    assert (
        main(
            [
                "labels",
                "import",
                *common,
                "--csv",
                str(table),
                "--cell-columns",
                "ID",
                "im_tiffname",
                "--label-columns",
                "mll_annotation",
                "prediction",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "labels",
                "agreement",
                *common,
                "--annotators",
                "mll_annotation",
                "prediction",
                "--json",
                str(summary),
                "--out",
                str(confusion),
            ]
        )
        == 0
    )
    result = json.loads(summary.read_text())
    matrix = pd.read_csv(confusion).set_index("mll_annotation")
    result["confusion"] = {
        row: {col: int(v) for col, v in values.items() if v} for row, values in matrix.iterrows()
    }
    return result


def _writer(path: str, annotator: str, actions: int, cells: int) -> None:
    from napari_hematology.core.annotations import AnnotationStore

    with AnnotationStore(path) as store:
        for index in range(actions):
            store.set_label(f"cell{index % cells}", ("blast", "normal")[index % 2], annotator)


def bench_store(workdir: Path, actions: int) -> dict:
    from napari_hematology.core.annotations import AnnotationStore

    path = workdir / "store.sqlite"
    cells = 500
    with AnnotationStore(path) as store:
        store.add_classes(["blast", "normal"])
        store.add_cells([{"name": f"cell{i}"} for i in range(cells)])
    context = multiprocessing.get_context("spawn")
    per_writer = actions // 2
    writers = [
        context.Process(target=_writer, args=(str(path), f"writer{i}", per_writer, cells)) for i in range(2)
    ]
    started = time.perf_counter()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    seconds = time.perf_counter() - started
    with AnnotationStore(path) as store:
        recorded = store.event_count()
    return {
        "writers": 2,
        "actions": per_writer * 2,
        "recorded": recorded,
        "lost": per_writer * 2 - recorded,
        "seconds": round(seconds, 2),
        "actions_per_second": round(per_writer * 2 / seconds, 1),
        "note": "each action its own transaction (WAL, synchronous=NORMAL); seconds include process start-up",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="Datasets benchmarked in parallel.")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        results = {
            "command": f"benchmarks/bench_label_noise.py --seeds {args.seeds} --actions {args.actions} "
            f"--workers {args.workers}",
            "noise_rate": NOISE,
            "seeds": args.seeds,
            "store": bench_store(workdir, args.actions),
            "scemila_agreement": bench_agreement(workdir),
            "datasets": bench_detection_and_training(args.seeds, args.workers),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
