"""Choosing the number of supervised genes (``select_genes``) by cross-validation on the training data."""

from __future__ import annotations

import copy

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.expression.classifier import (
    ExpressionConfig,
    fit_expression_model,
    predict_expression,
    training_labels,
)
from napari_hematology.core.expression.data import ExpressionData
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

GENE_COUNT_CANDIDATES = (10, 20, 50, 100, 200, 500)


def cross_validate_gene_count(
    data: ExpressionData,
    label_key: str,
    config: ExpressionConfig,
    candidates: tuple[int, ...] = GENE_COUNT_CANDIDATES,
    folds: int = 5,
    repeats: int = 2,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> tuple[int, dict[int, float]]:
    """Repeated stratified k-fold accuracy of ``config`` with each candidate ``select_genes``.

    Only the labelled cells of ``data`` are used (the training set), so the choice never sees test data;
    genes are selected again inside every fold. Ties go to the smallest gene count. The head and its input
    are resolved once on the whole of ``data`` so every fold fits the same kind of model as the final fit,
    and encoder pretraining is skipped when the head reads genes (the encoder cannot change its
    predictions).

    Args:
        data: Training data.
        label_key: Annotation column with the classes.
        config: Model settings; its ``preprocess.select_genes`` is replaced by each candidate.
        candidates: Gene counts to try.
        folds: Number of folds (reduced to the size of the smallest class when needed).
        repeats: Number of different random fold assignments averaged (seeded by the head's seed).
        progress: Progress callback (one step per fitted model).
        should_stop: Cancellation callback.

    Returns:
        The chosen gene count and the cross-validated accuracy of every candidate.

    Raises:
        InputError: Fewer than two labelled cells in some class, or no candidate.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    labels, _ = training_labels(data, label_key)
    labelled = data.subset(labels != "")
    targets = labels[labels != ""]
    smallest = int(np.unique(targets, return_counts=True)[1].min())
    if smallest < 2 or not candidates:
        raise InputError(
            f"{data.name}: choosing the gene count by cross-validation needs at least 2 labelled cells per "
            f"class (smallest class has {smallest}) and at least one candidate count."
        )
    splitter = RepeatedStratifiedKFold(n_splits=min(folds, smallest), n_repeats=repeats,
                                       random_state=config.head_training.seed)
    splits = list(splitter.split(targets, targets))
    base = config.resolved(data.n_cells, len(targets))
    if base.head_input == "genes":
        base.pretraining.epochs = 0
    scores: dict[int, float] = {}
    for step, count in enumerate(candidates):
        trial = copy.deepcopy(base)
        trial.preprocess.select_genes = count
        correct = 0
        for fit_rows, check_rows in splits:
            check_cancel(should_stop)
            model = fit_expression_model(labelled.subset(fit_rows), label_key, trial)
            predicted = predict_expression(model, labelled.subset(check_rows))["predicted"].to_numpy()
            correct += int((predicted == targets[check_rows]).sum())
        scores[count] = correct / (len(targets) * repeats)
        if progress is not None:
            progress(step + 1, len(candidates), f"{count} genes: CV accuracy {scores[count]:.3f}")
    best = max(scores.values())
    return min(count for count, score in scores.items() if score == best), scores
