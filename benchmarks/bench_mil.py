"""Benchmark of slide-level attention MIL on real data; writes benchmarks/results/mil.json.

1. Bags of real cell crops: ALL-IDB2 blasts hidden among normal white cells (ALL-IDB2 normals, wbc_seg,
   BCCD crops). Every bag has 30 cells, 8 of them from ALL-IDB2; a positive bag has 3-6 blasts among those
   8, a negative none ("easy") or 0-2 ("threshold": the class is ">= 3 blasts among 30 cells"). Cells
   are split 50/50 into a train and a test pool first, so no cell is shared
   between training and test bags. Reports held-out bag AUROC and how well attention ranks the blasts
   first (instance AUROC of attention within positive bags).
2. SCEMILA patient table (189 patients, 5 genetic subtypes, 8 cell-type fractions): each patient becomes a
   bag of 300 cells drawn from its composition (one-hot cell types as cell features); 5-fold stratified
   macro-F1 and per-class F1 of the bag model vs logistic regression on the fractions, same folds.
3. Times for a 500-cell bag on this machine: encoding, training, prediction.

Run: .venv/bin/python benchmarks/bench_mil.py [--encoder descriptors] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.calibration import fit_temperature, softmax
from napari_hematology.core.errors import HematologyError
from napari_hematology.core.subtype.bags import DEFAULT_CLASSES, Bags, MilConfig
from napari_hematology.core.subtype.features import CELL_CLASSIFIER, encode_files, resolve_encoder
from napari_hematology.core.subtype.fitting import (
    CrossValidation,
    bag_metrics,
    bag_outputs,
    cross_validate,
    grouped_folds,
    train_mil,
)
from napari_hematology.core.subtype.prediction import load_mil_model, predict_bags
from napari_hematology.core.training import TrainConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "mil.json"
BAG_SIZE, IDB_PER_BAG = 30, 8


def cell_pools(data: Path, seed: int) -> dict[str, dict[str, list[str]]]:
    """Real crops by kind (blast, idb_normal, other), each split 50/50 into train and test pools."""
    idb = data / "single_cells" / "all_idb2"
    labels = pd.read_csv(idb / "labels.csv")
    kinds = {
        "blast": [str(idb / p) for p in labels.loc[labels["label"] == "blast", "image"]],
        "idb_normal": [str(idb / p) for p in labels.loc[labels["label"] == "normal", "image"]],
        "other": sorted(str(p) for p in (data / "single_cells" / "wbc_seg").glob("dataset*/*.bmp"))
        + sorted(str(p) for p in (data / "single_cells" / "bccd_crops" / "images").rglob("*.jpg")),
    }
    rng = np.random.default_rng(seed)
    pools = {"train": {}, "test": {}}
    for kind, paths in kinds.items():
        order = rng.permutation(len(paths))
        half = len(paths) // 2
        pools["train"][kind] = [paths[i] for i in order[:half]]
        pools["test"][kind] = [paths[i] for i in order[half:]]
    return pools


def make_bags(
    pool: dict[str, list[str]], n_bags: int, rng, negative_blasts: int
) -> tuple[list[list[str]], list[str], list[np.ndarray]]:
    """Bags of BAG_SIZE cells; positives hold 3-6 blasts among their IDB_PER_BAG ALL-IDB2 cells,
    negatives 0 to ``negative_blasts``."""
    bags, labels, keys = [], [], []
    for i in range(n_bags):
        blasts = int(rng.integers(3, 7)) if i % 2 else int(rng.integers(0, negative_blasts + 1))
        cells = list(rng.choice(pool["blast"], blasts, replace=False))
        cells += list(rng.choice(pool["idb_normal"], IDB_PER_BAG - blasts, replace=False))
        cells += list(rng.choice(pool["other"], BAG_SIZE - IDB_PER_BAG, replace=False))
        bags.append(cells)
        labels.append("blasts" if i % 2 else "no_blasts")
        keys.append(np.array([c in set(pool["blast"]) for c in cells]))
    return bags, labels, keys


def to_bags(cells: list[list[str]], labels: list[str], features: dict[str, np.ndarray], prefix: str) -> Bags:
    return Bags(
        names=[f"{prefix}{i}" for i in range(len(cells))],
        features=[np.stack([features[c] for c in bag]) for bag in cells],
        cells=cells,
        labels=labels,
        groups=[f"{prefix}{i}" for i in range(len(cells))],
    )


def real_crop_bags(
    data: Path, encoder_spec: str, seed: int, branch_per_class: bool, negative_blasts: int = 0
) -> dict:
    from sklearn.metrics import roc_auc_score

    pools = cell_pools(data, seed)
    paths = sorted({p for pool in pools.values() for kind in pool.values() for p in kind})
    started = time.perf_counter()
    matrix = encode_files(paths, resolve_encoder(encoder_spec))
    encode_seconds = time.perf_counter() - started
    features = dict(zip(paths, matrix, strict=True))
    rng = np.random.default_rng(seed)
    train = to_bags(*make_bags(pools["train"], 120, rng, negative_blasts)[:2], features, "train")
    test_cells, test_labels, test_keys = make_bags(pools["test"], 100, rng, negative_blasts)
    test = to_bags(test_cells, test_labels, features, "test")
    config = MilConfig(
        encoder=encoder_spec,
        folds=3,
        branch_per_class=branch_per_class,
        train=TrainConfig(
            epochs=60, batch_size=8, learning_rate=1e-3, weight_decay=1e-2, device="cpu", seed=seed
        ),
    )
    started = time.perf_counter()
    mil = train_mil(train, config)
    train_seconds = time.perf_counter() - started
    predictions, attention = predict_bags(mil, test)
    probabilities = predictions[[f"prob_{c}" for c in mil.classes]].to_numpy()
    targets = np.array([mil.classes.index(label) for label in test.labels])
    metrics = bag_metrics(targets, probabilities, mil.classes)
    uncalibrated = softmax(bag_outputs(mil.model, test.features)[0])
    within, pooled_scores, pooled_truth = [], [], []
    for name, keys, label in zip(test.names, test_keys, test.labels, strict=True):
        if label != "blasts":
            continue
        weights = attention.loc[attention["bag"] == name, "attention"].to_numpy()
        within.append(roc_auc_score(keys, weights))
        pooled_scores += list(weights * len(weights))
        pooled_truth += list(keys)
    return {
        "encoder": encoder_spec,
        "branch_per_class": branch_per_class,
        "blasts_in_negative_bags": f"0-{negative_blasts}",
        "blasts_in_positive_bags": "3-6",
        "cells": {kind: {split: len(pools[split][kind]) for split in pools} for kind in pools["train"]},
        "train_bags": len(train.names),
        "test_bags": len(test.names),
        "bag_size": BAG_SIZE,
        "test_bag_auroc": metrics["auroc"],
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_nll_calibrated": metrics["nll"],
        "test_nll_uncalibrated": bag_metrics(targets, uncalibrated, mil.classes)["nll"],
        "attention_instance_auroc_mean_within_bag": float(np.mean(within)),
        "attention_instance_auroc_pooled": float(roc_auc_score(pooled_truth, pooled_scores)),
        "cross_validation_on_train_bags": mil.metadata["cross_validation"],
        "temperature": mil.metadata["temperature"],
        "encode_seconds_all_cells_using_cache": encode_seconds,
        "train_seconds_with_3fold_cv": train_seconds,
    }


def scemila_table(data: Path, seed: int, cells_per_bag: int = 300) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table = pd.read_csv(data / "tables" / "scemila_patient_composition.csv")
    types = [c for c in table.columns if c not in ("patient", "target")]
    fractions = table[types].to_numpy(float)
    fractions = fractions / fractions.sum(1, keepdims=True)
    classes = DEFAULT_CLASSES
    targets = np.array([classes.index(t) for t in table["target"]])
    rng = np.random.default_rng(seed)
    eye = np.eye(len(types), dtype=np.float32)
    features = [eye[rng.choice(len(types), cells_per_bag, p=row)] for row in fractions]
    groups = table["patient"].astype(str).tolist()
    fold = grouped_folds(targets, groups, 5, seed)
    config = MilConfig(
        encoder="one-hot cell type",
        folds=5,
        hidden=64,
        dropout=0.1,
        instance_dropout=0.1,
        train=TrainConfig(
            epochs=80, batch_size=8, learning_rate=3e-3, weight_decay=1e-2, device="cpu", seed=seed
        ),
    )
    started = time.perf_counter()
    mil_cv = cross_validate(features, targets, groups, classes, config, fold)
    mil_seconds = time.perf_counter() - started
    baseline = np.zeros((len(targets), len(classes)))
    for k in range(int(fold.max()) + 1):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        model.fit(fractions[fold != k], targets[fold != k])
        baseline[fold == k] = model.predict_proba(fractions[fold == k])
    return {
        "patients": len(targets),
        "cells_per_bag": cells_per_bag,
        "cell_features": "one-hot cell type",
        "folds": int(fold.max()) + 1,
        "attention_mil": mil_cv.metrics,
        "attention_mil_nll_temperature_fitted_on_other_folds": nll_cross_fitted_temperature(mil_cv, targets),
        "logistic_regression_on_fractions": bag_metrics(targets, baseline, classes),
        "attention_mil_seconds_5_folds": mil_seconds,
    }


def nll_cross_fitted_temperature(validation: CrossValidation, targets: np.ndarray) -> float:
    """Out-of-fold NLL where each fold's temperature is fitted on the other folds' logits only."""
    probabilities = np.zeros_like(validation.logits)
    for k in np.unique(validation.fold):
        held_out = validation.fold == k
        temperature = fit_temperature(validation.logits[~held_out], targets[~held_out])
        probabilities[held_out] = softmax(validation.logits[held_out], temperature)
    return bag_metrics(targets, probabilities, DEFAULT_CLASSES)["nll"]


def bag_of_500_times(data: Path, encoder_spec: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    crops = sorted(str(p) for p in (data / "single_cells" / "wbc_seg").glob("dataset*/*.bmp"))
    crops += sorted(str(p) for p in (data / "single_cells" / "bccd_crops" / "images").rglob("*.jpg"))
    crops = list(rng.choice(crops, 500, replace=len(crops) < 500))
    encoder = resolve_encoder(encoder_spec)
    started = time.perf_counter()
    features = encode_files(crops, encoder, cache_dir="")
    encode_seconds = time.perf_counter() - started
    bags = Bags(
        names=[f"slide{i}" for i in range(20)],
        features=[
            features[rng.permutation(500)] + rng.normal(0, 0.05, features.shape).astype(np.float32)
            for _ in range(20)
        ],
        cells=[list(range(500))] * 20,
        labels=["a", "b"] * 10,
    )
    config = MilConfig(
        encoder=encoder_spec, folds=0, train=TrainConfig(epochs=20, batch_size=8, device="cpu")
    )
    started = time.perf_counter()
    mil = train_mil(bags, config)
    train_seconds = time.perf_counter() - started
    one = Bags(names=["slide"], features=[features], cells=[list(range(500))])
    with tempfile.TemporaryDirectory() as folder:
        mil.save(folder)
        started = time.perf_counter()
        mil = load_mil_model(folder)
        load_seconds = time.perf_counter() - started
    predict_bags(mil, one)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        predict_bags(mil, one)
        timings.append(time.perf_counter() - started)
    return {
        "encoder": encoder_spec,
        "encode_500_cells_seconds_uncached": encode_seconds,
        "encode_500_cells_seconds_uncached_cell_classifier": _classifier_encode_seconds(crops),
        "load_model_seconds": load_seconds,
        "train_20_bags_of_500_cells_20_epochs_seconds": train_seconds,
        "predict_one_500_cell_bag_from_features_seconds_median": float(np.median(timings)),
    }


def _classifier_encode_seconds(crops: list[str]) -> float | None:
    """Time the shipped cell classifier's embedding of the crops (None when it has no weights)."""
    try:
        encoder = resolve_encoder(CELL_CLASSIFIER)
    except HematologyError:
        return None
    started = time.perf_counter()
    encode_files(crops, encoder, cache_dir="")
    return time.perf_counter() - started


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--encoder", default="descriptors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "command": "python benchmarks/bench_mil.py " + f"--encoder {args.encoder} --seed {args.seed}",
        "machine": f"{platform.machine()}, {args.threads} torch thread(s), CPU only",
        "real_crop_bags": real_crop_bags(args.data, args.encoder, args.seed, branch_per_class=False),
        "real_crop_bags_branch_per_class": real_crop_bags(
            args.data, args.encoder, args.seed, branch_per_class=True
        ),
        "real_crop_bags_threshold": real_crop_bags(
            args.data, args.encoder, args.seed, branch_per_class=False, negative_blasts=2
        ),
        "scemila_patient_table": scemila_table(args.data, args.seed),
        "bag_of_500_cells": bag_of_500_times(args.data, args.encoder, args.seed),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
