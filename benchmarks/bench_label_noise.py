"""Label-noise benchmark: detection of injected flips, robust training, real double labels, store throughput.

Run: ``.venv/bin/python benchmarks/bench_label_noise.py [--seeds 5] [--actions 10000] [--train-epochs 100]
[--parts detection training agreement store] [--options ...]``. Writes
``benchmarks/results/label_noise.json``, keeping the figures of parts and training options not run
(training figures per ``--train-epochs``). Real data from ``../shared/data`` (or
$NAPARI_HEMATOLOGY_DATA); all numbers on CPU with one torch thread.

1. 20% class-dependent noise (labels of confusable pairs swapped) on ALL-IDB2 (blast <-> normal), WBC-seg and
   BCCD crops (neutrophil <-> eosinophil, lymphocyte <-> monocyte), 5 seeds: AUROC of the issue score for
   the flipped cells and precision at recall >= 0.70 (issue issue-5 targets: >= 0.90 and >= 0.80).
2. Accuracy on clean held-out cells (30%) after training on noisy labels with plain CE, GCE, SCE, small-loss
   selection and co-teaching, after removing or correcting flagged labels, after self-supervised
   pretraining on the training crops (labels unused) with CE or GCE, and with clean labels (with and
   without that pretraining); every classifier trained for ``--train-epochs`` epochs (flagged labels from
   the shipped detection settings).
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
PARTS = ("detection", "training", "agreement", "store")
TRAINING = {
    "noisy_ce": "ce",
    "gce": "gce",
    "sce": "sce",
    "small_loss": "small_loss",
    "coteaching": "coteaching",
}
FLAGGED = ("removed_flagged", "corrected_flagged")
PRETRAINED = {"pretrained_ce": "ce", "pretrained_gce": "gce", "pretrained_clean_ce": "ce"}
PRETRAIN_EPOCHS = 100
OPTIONS = (*TRAINING, "clean_ce", *FLAGGED, *PRETRAINED)
REFERENCES = ("noisy_ce", "clean_ce", "pretrained_clean_ce")  # not robust options: no gap share


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


def with_training(config, **changes):
    """A copy of an IssueConfig whose training settings take ``changes``."""
    from dataclasses import replace

    return replace(config, train=replace(config.train, **changes))


def detection(crops, labels, pairs, seed, config) -> dict:
    from sklearn.metrics import roc_auc_score

    from napari_hematology.core.labels.issues import find_label_issues_in_crops

    noisy, flipped = inject_noise(labels, pairs, np.random.default_rng(seed))
    issues = find_label_issues_in_crops(crops, list(noisy), with_training(config, seed=seed))
    scores, flagged = issues["issue_score"].to_numpy(), issues["is_issue"].to_numpy()
    fixed = issues["suggested"].to_numpy()[flipped] == labels[flipped]
    return {
        "auroc": float(roc_auc_score(flipped, scores)),
        "precision_at_recall_0.70": precision_at_recall(flipped, scores),
        "flagged_precision": float(flipped[flagged].mean()) if flagged.any() else 0.0,
        "flagged_recall": float(flagged[flipped].mean()),
        "suggestion_correct_on_flipped": float(fixed.mean()),
    }


def _accuracy(train_x, train_y, test_x, test_y, config, pretrained=None) -> float:
    from napari_hematology.core.labels.issues import encode_labels, fit_classifier, predict_probabilities

    codes, classes = encode_labels(list(train_y))
    model, standardize = fit_classifier(train_x, codes, len(classes), config, pretrained=pretrained)
    predicted = np.asarray(classes, dtype=object)[predict_probabilities(model, standardize, test_x).argmax(1)]
    return float((predicted == test_y).mean())


def accuracies(crops, labels, pairs, seed, config, epochs: int, options: set[str]) -> dict:
    """Clean held-out accuracy of the chosen training ``options``; classifiers trained for ``epochs`` epochs.

    Flagged labels come from the shipped detection settings (``config``), whatever ``epochs`` is; the
    pretrained options share one encoder pretrained (without labels) on the training crops.
    """
    from dataclasses import replace

    from sklearn.model_selection import train_test_split

    from napari_hematology.core.labels.issues import find_label_issues_in_crops, pretrain_crop_encoder

    config = with_training(config, seed=seed)
    trained = with_training(config, epochs=epochs)
    rows = np.arange(len(labels))
    train_rows, test_rows = train_test_split(rows, test_size=0.3, stratify=labels, random_state=seed)
    clean = labels[train_rows]
    noisy, _ = inject_noise(clean, pairs, np.random.default_rng(seed))
    train_x, test_x, test_y = crops[train_rows], crops[test_rows], labels[test_rows]

    def fit(given, loss: str, kept=slice(None), pretrained=None) -> float:
        chosen = replace(trained, loss=loss)
        return _accuracy(train_x[kept], given[kept], test_x, test_y, chosen, pretrained)

    result = {name: fit(noisy, loss) for name, loss in TRAINING.items() if name in options}
    if "clean_ce" in options:
        result["clean_ce"] = fit(clean, "ce")
    if set(FLAGGED) & options:
        issues = find_label_issues_in_crops(train_x, list(noisy), config)
        keep = ~issues["is_issue"].to_numpy()
        corrected = np.where(keep, noisy, issues["suggested"].to_numpy(dtype=object))
        given = {"removed_flagged": (noisy, keep), "corrected_flagged": (corrected, slice(None))}
        chosen = [name for name in FLAGGED if name in options]
        result.update({name: fit(given[name][0], "ce", given[name][1]) for name in chosen})
    if set(PRETRAINED) & options:
        pretrained = pretrain_crop_encoder(train_x, replace(config, pretrain_epochs=PRETRAIN_EPOCHS))
        given = {"pretrained_ce": noisy, "pretrained_gce": noisy, "pretrained_clean_ce": clean}
        result.update(
            {
                name: fit(given[name], loss, pretrained=pretrained)
                for name, loss in PRETRAINED.items()
                if name in options
            }
        )
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
    names = [name for name in accuracy if name not in REFERENCES]
    return {name: (accuracy[name]["mean"] - noisy) / gap if gap > 0 else None for name in names}


def _dataset(name: str):
    """Crops, labels and the shipped detection settings of one dataset (one torch thread)."""
    import torch

    from napari_hematology.core.cells.descriptors import read_crops
    from napari_hematology.core.labels.issues import IssueConfig

    torch.set_num_threads(1)
    config = with_training(IssueConfig(), device="cpu")
    paths, labels = load_cells(name)
    return read_crops(paths, config.crop_size), labels, config


def bench_detection(name: str, seeds: int) -> dict:
    """Flipped-label detection figures of one dataset."""
    started = time.perf_counter()
    crops, labels, config = _dataset(name)
    found = [detection(crops, labels, DATASETS[name], seed, config) for seed in range(seeds)]
    print(name, "detection", json.dumps(summarise(found)), flush=True)
    return {**summarise(found), "seconds": round(time.perf_counter() - started, 1)}


def bench_training(name: str, seeds: int, epochs: int, options: set[str]) -> dict:
    """Clean held-out accuracy (mean and spread over seeds) of the chosen training options on one dataset."""
    started = time.perf_counter()
    crops, labels, config = _dataset(name)
    trained = [
        accuracies(crops, labels, DATASETS[name], seed, config, epochs, options) for seed in range(seeds)
    ]
    print(name, "training", epochs, json.dumps(summarise(trained)), flush=True)
    return {"accuracy_on_clean_test": summarise(trained), "seconds": round(time.perf_counter() - started, 1)}


def merge_training(previous: dict, measured: dict) -> dict:
    """Training figures of newly measured options merged over earlier ones, gap shares recomputed.

    ``seconds`` adds up, so it stays the time all options of the entry took.
    """
    accuracy = {**previous.get("accuracy_on_clean_test", {}), **measured["accuracy_on_clean_test"]}
    return {
        "accuracy_on_clean_test": accuracy,
        "gap_closed": gap_closed(accuracy),
        "seconds": round(previous.get("seconds", 0.0) + measured["seconds"], 1),
    }


def bench_datasets(
    parts: list[str], seeds: int, epochs: int, workers: int, options: set[str], previous: dict
) -> dict:
    """Detection and/or training figures of every dataset, merged into ``previous`` results."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(part, name) for part in ("detection", "training") if part in parts for name in DATASETS]
    # Not multiprocessing.Pool: its daemonic workers cannot start cleanlab's own worker processes.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [
            pool.submit(bench_detection, name, seeds)
            if part == "detection"
            else pool.submit(bench_training, name, seeds, epochs, options)
            for part, name in jobs
        ]
        outcomes = [future.result() for future in futures]
    datasets = previous.get("datasets", {})
    for (part, name), outcome in zip(jobs, outcomes, strict=True):
        entry = datasets.setdefault(name, {})
        entry.update(cells=len(load_cells(name)[1]), noisy_pairs=DATASETS[name])
        if part == "detection":
            entry["detection"] = outcome
        else:
            by_epochs = entry.setdefault("training_by_epochs", {})
            by_epochs[str(epochs)] = merge_training(by_epochs.get(str(epochs), {}), outcome)
    return datasets


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
    from napari_hematology.core.labels.store import AnnotationStore

    with AnnotationStore(path) as store:
        for index in range(actions):
            store.set_label(f"cell{index % cells}", ("blast", "normal")[index % 2], annotator)


def bench_store(workdir: Path, actions: int) -> dict:
    from napari_hematology.core.labels.store import AnnotationStore

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
    parser.add_argument(
        "--train-epochs", type=int, default=100, help="Epochs of the classifiers compared in part 2."
    )
    subsets = {
        "--parts": (PARTS, "Parts to run; the figures of the other parts in the results file are kept."),
        "--options": (OPTIONS, "Training options measured in part 2; the figures of the others are kept."),
    }
    for flag, (choices, text) in subsets.items():
        parser.add_argument(flag, nargs="+", choices=choices, default=list(choices), help=text)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 1
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(noise_rate=NOISE, seeds=args.seeds)
    results.setdefault("commands", {})
    command = (
        f"benchmarks/bench_label_noise.py --seeds {args.seeds} --actions {args.actions} --workers "
        f"{args.workers} --train-epochs {args.train_epochs} --parts"
    )
    for part in args.parts:
        results["commands"][part] = f"{command} {part}"
    if "training" in args.parts and set(args.options) != set(OPTIONS):
        chosen = f"{command} training --options {' '.join(args.options)}"
        results["commands"].setdefault("training_options", {}).update(dict.fromkeys(args.options, chosen))
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if "store" in args.parts:
            results["store"] = bench_store(workdir, args.actions)
        if "agreement" in args.parts:
            results["scemila_agreement"] = bench_agreement(workdir)
    if {"detection", "training"} & set(args.parts):
        results["datasets"] = bench_datasets(
            args.parts, args.seeds, args.train_epochs, args.workers, set(args.options), results
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
