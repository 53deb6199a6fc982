"""The review queue: cells of a project ordered for an expert to check, and retraining from their fixes.

Given labels are stored as ``import`` labels of annotator ``given``; suggestions of the label-issue
model as ``model`` labels of annotator ``label-issues`` (with issue score and confidence); reviewers'
decisions as ``human`` labels under their own names. Cells sent to review from blast detection carry the
classifier's call instead (``model`` labels of annotator ``classifier``, with its probability): the queue
shows that call as both the given label and the suggestion, so Enter confirms it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.labels.agreement import consensus
from napari_hematology.core.labels.store import AnnotationStore
from napari_hematology.core.progress import ProgressCallback, StopCallback

GIVEN = "given"
SUGGESTER = "label-issues"
CLASSIFIER = "classifier"  # napari_hematology.core.labels.exchange.MODEL_ANNOTATOR
ORDERS = ("issue_score", "uncertainty", "random")
QUEUE_COLUMNS = [
    "cell",
    "image",
    "x",
    "y",
    "crop",
    "given",
    "suggested",
    "issue_score",
    "confidence",
    "label",
    "reviewed",
]


def store_issues(project: str | Path, issues, base: str | Path | None = None) -> int:
    """Store a ``label-issues`` table in a project: cells, given labels (once) and fresh suggestions.

    Args:
        project: Project file (created if missing).
        issues: Table with ``image, given, suggested, issue_score`` and optionally ``confidence``.
        base: Folder that relative ``image`` paths are relative to (the cells CSV's folder).

    Returns:
        The number of cells in the project.

    """
    base = Path(base) if base is not None else Path.cwd()
    with AnnotationStore(project) as store:
        store.add_classes(sorted(set(issues["given"].astype(str)) | set(issues["suggested"].astype(str))))
        count = store.add_cells(
            [{"name": str(image), "crop": str(_resolve(base, image))} for image in issues["image"]]
        )
        already = set(store.current_labels([GIVEN])["cell"])
        fresh = issues[~issues["image"].astype(str).isin(already)]
        if len(fresh):
            store.set_labels(
                list(zip(fresh["image"].astype(str), fresh["given"].astype(str), strict=True)),
                GIVEN,
                "import",
            )
        confidence = issues["confidence"] if "confidence" in issues else [None] * len(issues)
        store.set_labels(
            list(zip(issues["image"].astype(str), issues["suggested"].astype(str), strict=True)),
            SUGGESTER,
            "model",
            scores=[float(score) for score in issues["issue_score"]],
            confidences=[None if value is None else float(value) for value in confidence],
        )
    return count


def _resolve(base: Path, image) -> Path:
    path = Path(str(image))
    return path if path.is_absolute() else (base / path).resolve()


def _labels_of(labels, annotator: str, column: str):
    return labels[labels["annotator"] == annotator].set_index("cell")["label"].rename(column)


def review_queue(
    store: AnnotationStore,
    annotator: str,
    order: str = "issue_score",
    classes: Sequence[str] | None = None,
    min_score: float = 0.0,
    seed: int = 0,
):
    """Cells to review, in review order.

    Args:
        store: The open project.
        annotator: The reviewer; their current labels fill ``label`` and ``reviewed``.
        order: ``issue_score`` (most likely wrong first), ``uncertainty`` (least confident suggestion
            first) or ``random`` (an audit sample).
        classes: Keep cells whose given or suggested label is one of these (None keeps all).
        min_score: Keep cells with at least this issue score.
        seed: Seed of the random order.

    Returns:
        A DataFrame with columns ``QUEUE_COLUMNS``.

    """
    if order not in ORDERS:
        raise InputError(f"Unknown queue order {order!r}; choose one of {', '.join(ORDERS)}.")
    labels = store.current_labels()
    suggestions = labels[labels["annotator"] == SUGGESTER].set_index("cell")[["score", "confidence"]]
    queue = store.cells().set_index("cell")
    queue = queue.join(_labels_of(labels, GIVEN, "given")).join(_labels_of(labels, SUGGESTER, "suggested"))
    queue = queue.join(suggestions.rename(columns={"score": "issue_score"}))
    # cells sent from blast detection: the classifier's call is what was given, and what Enter confirms
    call = _labels_of(labels, CLASSIFIER, "call").reindex(queue.index)
    called = labels[labels["annotator"] == CLASSIFIER].set_index("cell")["confidence"].reindex(queue.index)
    queue["confidence"] = queue["confidence"].where(queue["suggested"].notna(), called)
    queue["given"] = queue["given"].where(queue["given"].notna(), call)
    queue["suggested"] = queue["suggested"].where(queue["suggested"].notna(), call)
    queue = queue.join(_labels_of(labels, annotator, "label")) if annotator else queue.assign(label=None)
    queue["issue_score"] = queue["issue_score"].astype(float).fillna(0.0)
    queue["confidence"] = queue["confidence"].astype(float).fillna(1.0)
    queue["reviewed"] = queue["label"].notna()
    if classes:
        wanted = set(classes)
        queue = queue[queue["given"].isin(wanted) | queue["suggested"].isin(wanted)]
    queue = queue[queue["issue_score"] >= min_score]
    if order == "issue_score":
        queue = queue.sort_values("issue_score", ascending=False, kind="stable")
    elif order == "uncertainty":
        queue = queue.sort_values("confidence", ascending=True, kind="stable")
    else:
        queue = queue.iloc[np.random.default_rng(seed).permutation(len(queue))]
    return queue.reset_index()[QUEUE_COLUMNS]


def corrected_labels(store: AnnotationStore, require_reviewed: bool = False):
    """Return the best label of every cell: the reviewers' consensus if any, else its imported label.

    Imported labels are those of source ``import`` (the given labels of label issues, crop folders);
    model suggestions never count.

    Args:
        store: The open project.
        require_reviewed: Raise when no cell has a reviewer's or an imported label.

    Returns:
        A DataFrame ``cell, crop, label`` of the cells that have a label and a crop.

    Raises:
        InputError: ``require_reviewed`` and no cell has a usable label.

    """
    labels = store.current_labels()
    reviewed = consensus(labels).dropna(subset=["consensus"]).set_index("cell")["consensus"]
    imported = consensus(labels, sources=("import",)).dropna(subset=["consensus"]).set_index("cell")
    table = store.cells().set_index("cell")
    table["label"] = reviewed.reindex(table.index).combine_first(imported["consensus"].reindex(table.index))
    table = table.dropna(subset=["label", "crop"]).reset_index()[["cell", "crop", "label"]]
    if require_reviewed and table.empty:
        raise InputError(
            f"{store.path.name} has no reviewed cells yet (no reviewer's or imported label on a cell with a "
            "crop); review some cells in the Gallery or Review labels first."
        )
    return table


def lab_model_folder(project: str | Path) -> Path:
    """Where a project's fine-tuned classifier is saved: ``<project stem>_model`` next to it."""
    project = Path(project)
    return project.with_name(f"{project.stem}_model")


def fine_tune_project(
    project: str | Path,
    base: str | Path | None = None,
    config=None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> dict:
    """Fine-tune the cell classifier on a project's corrected labels and save it next to the project.

    Before/after accuracy is measured on a stratified fifth of the reviewed cells that the lab model
    did not train on (they fit its temperature; see
    :func:`~napari_hematology.core.cells.finetune.fine_tune_with_comparison`). The project's not yet
    reviewed crops help re-estimate its BatchNorm statistics (their labels are not used).

    Args:
        project: Project file.
        base: Base model folder; None uses the shipped weights.
        config: :class:`napari_hematology.core.cells.finetune.FineTuneConfig`.
        progress: Progress callback.
        should_stop: Cancellation callback; nothing is saved when cancelled.

    Returns:
        ``{"model_dir", "cells", "held_out", "before", "after", "seconds", "skipped"}`` (balanced
        accuracies; seconds of the whole retraining).

    Raises:
        InputError: Too few reviewed cells, or labels the base model does not know (without add_classes).

    """
    from napari_hematology.core.cells.classifier import load_classifier
    from napari_hematology.core.cells.finetune import (
        FineTuneConfig,
        comparison_trainings,
        fine_tune_with_comparison,
        read_labelled_cells,
        unlabelled_crops,
    )
    from napari_hematology.core.cells.recipe import save_classifier

    started = time.perf_counter()
    config = config or FineTuneConfig()
    with AnnotationStore(project, create=False) as store:
        labelled = corrected_labels(store, require_reviewed=True)
        cells = store.cells()
    unreviewed = cells.loc[cells["crop"].notna() & ~cells["cell"].isin(labelled["cell"]), "crop"]
    classifier = load_classifier(base, config.train.device)
    read = read_labelled_cells(
        labelled.rename(columns={"crop": "image"}), classifier, progress, should_stop
    )
    unlabelled = unlabelled_crops(list(unreviewed), classifier, should_stop=should_stop)
    trainings = _OverallProgress(progress, comparison_trainings(len(read.cells), config))
    lab, comparison = fine_tune_with_comparison(
        read.cells, classifier, config, trainings, should_stop, unlabelled=unlabelled
    )
    measured = {"held_out": {"cells": comparison.held_out, "before": comparison.before,
                             "after": comparison.after}}
    folder = save_classifier(lab, lab_model_folder(project), measured)
    return {
        "model_dir": folder,
        "cells": comparison.cells,
        "held_out": comparison.held_out,
        "before": comparison.before,
        "after": comparison.after,
        "seconds": round(time.perf_counter() - started, 1),
        "skipped": read.skipped_message(),
    }


class _OverallProgress:
    """Reports one or two trainings in a row as one progress bar: ``training k/n, epoch e/E``.

    Each training reports its own steps from the start; a step count that goes down starts the next one.
    """

    def __init__(self, progress: ProgressCallback | None, trainings: int) -> None:
        self.progress = progress
        self.trainings = max(1, trainings)
        self.index = 0
        self.last = -1

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if done < self.last:
            self.index = min(self.index + 1, self.trainings - 1)
        self.last = done
        if self.progress is None or total <= 0:
            return
        what = "the lab model" if self.index == self.trainings - 1 else "a model for the comparison"
        if self.trainings > 1:
            what = f"{what} ({self.index + 1}/{self.trainings})"
        self.progress(
            self.index * total + done, self.trainings * total, f"training {what}, {message}".rstrip(", ")
        )


def retrain_project(
    project: str | Path,
    config=None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
):
    """Re-run cross-validated label-issue detection on the corrected labels and store new suggestions.

    Args:
        project: Project file.
        config: :class:`napari_hematology.core.labels.issues.IssueConfig`.
        progress: Called as ``progress(done, total, message)``.
        should_stop: Returns True to cancel; nothing is stored when cancelled.

    Returns:
        The new issues table (as from ``find_label_issues``, ``image`` = cell name).

    """
    from napari_hematology.core.labels.issues import find_label_issues

    with AnnotationStore(project, create=False) as store:
        corrected = corrected_labels(store)
    if corrected.empty:
        raise InputError(f"{Path(project).name} has no labelled cells with crops; run label-issues first.")
    cells = corrected.rename(columns={"crop": "image"})
    issues = find_label_issues(cells[["image", "label"]], config, progress=progress, should_stop=should_stop)
    issues["image"] = issues["image"].map(dict(zip(cells["image"], cells["cell"], strict=True)))
    with AnnotationStore(project) as store:
        store.set_labels(
            list(zip(issues["image"], issues["suggested"], strict=True)),
            SUGGESTER,
            "model",
            scores=list(issues["issue_score"].astype(float)),
            confidences=list(issues["confidence"].astype(float)),
        )
    return issues
