"""Retrain benchmark: the Gallery's *Retrain classifier* on a 200-cell project, timed end to end.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_retrain.py [--cells 200] [--unreviewed 300]

Builds a review project of PBC crops the shipped classifier never trained on (past the first 40 per class,
which chose the stain recipe), ``--cells`` of them reviewed (labels as a reviewer's), ``--unreviewed``
more without labels, and runs :func:`~napari_hematology.core.labels.review.fine_tune_project` as the
Gallery does, with two torch threads (the 2-core machine the issue sets). Writes
``benchmarks/results/retrain.json``: seconds from the call to the saved lab model, training steps and
seconds per step, seconds to the first progress report, balanced accuracy before/after on the held-out
cells, and the load average around the run (check ``cat /proc/loadavg`` first: a busy machine is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "retrain.json"


def project_crops(cells: int, unreviewed: int):
    """Reviewed (file, label) rows balanced over the classes, and unreviewed files, all never trained on."""
    from bench_front_end import reported_crops

    table = reported_crops(DATA)
    classes = table["label"].nunique()
    per_class = -(-cells // classes)
    reviewed = table.groupby("label").head(per_class).head(cells)
    rest = table.drop(reviewed.index)
    return reviewed[["file", "label"]], rest["file"].head(unreviewed).tolist()


def run(cells: int, unreviewed: int, threads: int) -> dict:
    import torch

    from napari_hematology.core.cells.classifier import load_classifier
    from napari_hematology.core.cells.finetune import training_steps
    from napari_hematology.core.labels.review import fine_tune_project
    from napari_hematology.core.labels.store import AnnotationStore

    torch.set_num_threads(threads)
    reviewed, others = project_crops(cells, unreviewed)
    reports: list[tuple[float, int, int, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "lab.sqlite"
        with AnnotationStore(project) as store:
            store.add_classes(load_classifier().classes)
            files = [str(path) for path in [*reviewed["file"], *others]]
            store.add_cells([{"name": name, "crop": name} for name in files])
            store.set_labels(list(zip(map(str, reviewed["file"]), reviewed["label"], strict=True)),
                             "benchmark", "human")
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        result = fine_tune_project(
            project, progress=lambda done, total, message="": reports.append(
                (time.perf_counter() - started, done, total, message))
        )
        seconds = time.perf_counter() - started
    steps = training_steps(len(reviewed))
    first_training = next(moment for moment, _, _, message in reports if message.startswith("training"))
    return {
        "label": "held out (PBC crops the shipped classifier never trained on; nothing chosen on them)",
        "reviewed_cells": len(reviewed),
        "classes": sorted(reviewed["label"].unique().tolist()),
        "unreviewed_cells": len(others),
        "torch_threads": threads,
        "seconds": round(seconds, 1),
        "training_steps": steps,
        "seconds_per_step_including_reading": round(seconds / steps, 3),
        "seconds_to_first_training_report": round(first_training, 1),
        "progress_reports": len(reports),
        "held_out_cells": result["held_out"],
        "balanced_accuracy_before": round(result["before"], 4),
        "balanced_accuracy_after": round(result["after"], 4),
        "load_average_1min_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cores": os.cpu_count(),
        "command": (f"benchmarks/bench_retrain.py --cells {cells} --unreviewed {unreviewed} "
                    f"--threads {threads}"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--unreviewed", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 1
    result = run(args.cells, args.unreviewed, args.threads)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
