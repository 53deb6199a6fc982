"""Cell classifier benchmark: cross-validated accuracy of the default recipe, and crops per second.

    .venv/bin/python benchmarks/bench_classifier.py [--data ../shared/data] [--folds 5] [--threads 2]

``--skip-cv`` or ``--skip-speed`` run one part and keep the other part's figures already in the JSON.

Writes benchmarks/results/classifier.json:
- blast vs normal on single_cells/all_idb2, 5-fold cross-validated, with the default recipe of
  train-classifier (ClassifierRecipe defaults); the other sources are split into the same folds, which
  also gives held-out white-cell type accuracy on bccd_crops, wbc_seg and pbc (same-source figures;
  benchmarks/bench_any_lab.py measures sources never seen);
- crops/s classified end to end (files read from disk, normalised, classified) with the shipped weights:
  every distinct training crop file read once, its cached pages dropped first (``posix_fadvise``
  DONTNEED, no root needed) so that the run reads the disk rather than the page cache, next to the
  forward pass alone (network, colour statistics, atypical projection) on the same crops held in
  memory, measured in the same run, and their ratio.

For the speed figure alone, on a quiet machine (check ``cat /proc/loadavg`` first):

    .venv/bin/python benchmarks/bench_classifier.py --skip-cv --out benchmarks/results/classifier_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from napari_hematology.core.cells.classes import BLAST, NORMAL_TYPES
from napari_hematology.core.cells.classifier import CellClassifier, load_classifier
from napari_hematology.core.cells.classify_files import classify_images
from napari_hematology.core.cells.crop_batches import BATCH_SIZE
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


def drop_cached_pages(files: Sequence[str]) -> int:
    """Ask the kernel to drop the files' pages from its page cache, so that the next read goes to disk.

    ``posix_fadvise(POSIX_FADV_DONTNEED)`` works per file without root (unlike ``/proc/sys/vm/drop_caches``,
    which drops every process's cache). It is advice: pages another process has mapped stay.

    Returns:
        How many files were advised (0 where the platform has no ``posix_fadvise``).

    """
    if not hasattr(os, "posix_fadvise"):
        return 0
    advised = 0
    for name in files:
        try:
            handle = os.open(name, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
            advised += 1
        finally:
            os.close(handle)
    return advised


@contextmanager
def recorded_forward_passes() -> Iterator[dict]:
    """Record every ``CellClassifier.predict_prepared`` call: its crops, its time and torch's threads.

    The end-to-end run then keeps the normalised crops it made (so that the forward pass alone can be
    timed on them without reading any file a second time) and says how long the network took inside it.
    """
    import torch

    record: dict = {"crops": [], "seconds": 0.0, "torch_threads": None}
    original = CellClassifier.predict_prepared

    def timed(self, prepared, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, prepared, *args, **kwargs)
        finally:
            record["seconds"] += time.perf_counter() - started
            record["crops"].append(prepared)
            record["torch_threads"] = torch.get_num_threads()

    CellClassifier.predict_prepared = timed
    try:
        yield record
    finally:
        CellClassifier.predict_prepared = original


def forward_alone(classifier: CellClassifier, crops: np.ndarray, threads: int) -> dict:
    """Crops per second of the classifier's forward pass on crops already in memory (no reading)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        for first in range(0, len(crops), BATCH_SIZE):
            classifier.predict_prepared(crops[first:first + BATCH_SIZE])
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    return {"torch_threads": threads, "seconds": round(seconds, 2),
            "crops_per_second": round(len(crops) / seconds, 1)}


def stage_profile(files: list[str], forward_per_second: float, cores: int, sample: int = 300) -> dict:
    """Milliseconds per crop of each stage on one thread (every ``len // sample``-th file, now in the page
    cache), and the crops per second the cores allow for that much work per crop."""
    from napari_hematology.core.cells.crops import normalise_crop_checked, read_crop

    chosen = files[:: max(1, len(files) // sample)]
    started = time.perf_counter()
    decoded = [read_crop(path) for path in chosen]
    read_ms = 1000 * (time.perf_counter() - started) / len(chosen)
    started = time.perf_counter()
    for rgb in decoded:
        normalise_crop_checked(rgb)
    normalise_ms = 1000 * (time.perf_counter() - started) / len(chosen)
    network_ms = 1000 / forward_per_second
    total_ms = read_ms + normalise_ms + network_ms
    return {
        "crops": len(chosen),
        "read_and_decode_ms": round(read_ms, 2),
        "normalise_ms": round(normalise_ms, 2),
        "forward_pass_ms": round(network_ms, 2),
        "cpu_bound_crops_per_second": round(cores * 1000 / total_ms, 1),
        "note": "one thread each; the bound assumes every core busy with these stages and nothing else",
    }


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure_speed(data: Path, threads: int, keep_page_cache: bool = False) -> dict:
    """Crops per second, end to end (model load, read, normalise, classify) with the shipped weights.

    One ``classify_images`` call over every distinct training crop file, each read once (their cached
    pages dropped first unless ``keep_page_cache``), as a folder of a few thousand crops would be
    classified; then the forward pass alone on the crops that run normalised, held in memory, with the
    torch threads the run gave the network and with ``threads``.
    """
    import torch

    torch.set_num_threads(threads)
    files = list(dict.fromkeys(list_training_crops(data)["file"].tolist()))
    # warm up first-call allocations on blank crops, so that no file is read twice
    classifier = load_classifier()
    size = classifier.crop_size
    classifier.predict_prepared(np.full((64, size, size, 3), 255, dtype=np.uint8))
    advised = 0 if keep_page_cache else drop_cached_pages(files)
    page_cache = "kept" if keep_page_cache else (
        f"dropped for {advised} of {len(files)} files (posix_fadvise DONTNEED) before the run")
    load_before = load_average()
    with recorded_forward_passes() as record:
        started = time.perf_counter()
        table = classify_images(files, processes=True)  # as the command line runs it
        seconds = time.perf_counter() - started
    load_after = load_average()
    crops = np.concatenate(record["crops"])
    end_to_end = len(table) / seconds
    alone_in_run_threads = forward_alone(classifier, crops, record["torch_threads"])
    alone_all_threads = forward_alone(classifier, crops, threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    profile = stage_profile(files, alone_in_run_threads["crops_per_second"], cores)
    return {
        "files": len(files),
        "each_file_read": "once",
        "page_cache": page_cache,
        "crops": len(table),
        "skipped": len(table.attrs.get("skipped", [])),
        "threads": threads,
        "seconds": round(seconds, 2),
        "crops_per_second": round(end_to_end, 1),
        "network_seconds_inside_the_run": round(record["seconds"], 2),
        "forward_pass_alone": alone_in_run_threads,
        "forward_pass_alone_all_threads": alone_all_threads,
        "end_to_end_over_forward_pass_alone": round(end_to_end / alone_in_run_threads["crops_per_second"], 3),
        "load_average_1min_before_and_after": [load_before, load_after],
        "cores": cores,
        "stages_one_thread": profile,
        "end_to_end_over_cpu_bound": round(end_to_end / profile["cpu_bound_crops_per_second"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the speed test")
    parser.add_argument("--train-threads", type=int, default=2, help="CPU threads per CV training")
    parser.add_argument("--epochs", type=int, default=None, help="override (not the default recipe)")
    parser.add_argument("--backbone", default=None, help="override (not the default recipe)")
    parser.add_argument("--keep-page-cache", action="store_true",
                        help="do not drop the crop files' cached pages before the speed run")
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
        "command": " ".join(["python", "benchmarks/bench_classifier.py", *sys.argv[1:]]),
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
        result["speed_end_to_end"] = measure_speed(args.data, args.threads, args.keep_page_cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
