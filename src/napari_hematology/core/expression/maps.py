"""What the Expression widget shows: a 2-D PCA map of the latent, per-cell values and a confusion matrix.

The widget's Train scores the model on cells it did not learn from: a stratified share of the labelled
cells (:data:`HELD_OUT_FRACTION` of each class) is hidden from the classification head. Those cells still
take part in the label-free pretraining of the encoder, as unlabelled cells always do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from napari_hematology.core.expression.classifier import (
    ExpressionClassifier,
    ExpressionConfig,
    class_probabilities,
    fit_expression_model,
    prediction_table,
)
from napari_hematology.core.expression.data import ExpressionData, labels_of
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.projection import principal_components

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass
class LatentMap:
    """A fitted model's view of some data.

    Attributes:
        coordinates: (cells, 2) first two principal components of the latent.
        features: Per-cell table: ``cell``, ``label`` (if known), ``predicted``, ``confidence`` and
            ``prob_<class>`` columns.
        confusion: Counts of true (rows) vs. predicted (columns) classes of the scored cells, or None.
        scored_on: Which cells the confusion matrix counts, in words.
    """

    coordinates: np.ndarray
    features: pd.DataFrame
    confusion: pd.DataFrame | None
    scored_on: str = ""


def confusion_table(true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Counts of each true class (rows) predicted as each class (columns)."""
    true_classes = sorted(set(true) | set(classes), key=lambda name: (name not in classes, name))
    table = pd.crosstab(pd.Categorical(true, true_classes), pd.Categorical(predicted, classes),
                        dropna=False)
    table.index.name, table.columns.name = "true", "predicted"
    return table


def held_out_cells(
    labels: np.ndarray, fraction: float = HELD_OUT_FRACTION, seed: int = SPLIT_SEED
) -> np.ndarray:
    """Pick a random ``fraction`` of each class's labelled cells to keep out of training.

    Every class keeps at least one training cell; a class with two or more cells gives at least one.

    Args:
        labels: Label of every cell, ``""`` where unlabelled.
        fraction: Share of each class to hold out.
        seed: Seed of the draw.

    Returns:
        Boolean mask of the held-out cells.

    """
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels), dtype=bool)
    for name in np.unique(labels[labels != ""]):
        members = np.flatnonzero(labels == name)
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held_out[rng.choice(members, count, replace=False)] = True
    return held_out


def latent_map(model: ExpressionClassifier, data: ExpressionData, label_key: str | None = None, *,
               held_out: np.ndarray | None = None, progress: ProgressCallback | None = None,
               should_stop: StopCallback | None = None) -> LatentMap:
    """Predict every cell of ``data`` and lay the latent out in 2-D.

    Args:
        model: A fitted classifier.
        data: Cells to show (genes aligned to the model by name).
        label_key: Annotation column with known labels, for the ``label`` column and the confusion matrix.
        held_out: Mask of the cells kept out of training; when given, the confusion matrix counts only
            them and ``features`` gets a ``split`` column (``training`` / ``held out``).
        progress: Progress callback.
        should_stop: Cancellation callback.
    """
    latent, probabilities = class_probabilities(model, data, progress=progress, should_stop=should_stop)
    features = prediction_table(model, data, probabilities)
    features.insert(2, "confidence", probabilities.max(axis=1).round(4))
    confusion, scored_on = None, ""
    if label_key:
        labels = labels_of(data, label_key)
        features.insert(1, "label", labels)
        scored = labels != ""
        labelled = int(scored.sum())
        scored_on = f"all {labelled} labelled cells of {data.name}"
        if held_out is not None:
            features.insert(2, "split", np.where(held_out, "held out", "training"))
            scored &= held_out
            scored_on = (f"{int(scored.sum())} held-out cells ({scored.sum() / max(labelled, 1):.0%} of the "
                         "labelled cells, not used to train the classifier)")
        confusion = confusion_table(labels[scored], features["predicted"].to_numpy()[scored], model.classes)
    return LatentMap(principal_components(latent), features, confusion, scored_on)


def fit_and_map(data: ExpressionData, label_key: str, config: ExpressionConfig | None = None, *,
                progress: ProgressCallback | None = None,
                should_stop: StopCallback | None = None) -> tuple[ExpressionClassifier, LatentMap]:
    """Fit a classifier with a held-out share of the labels hidden, then map all cells (the widget's Train).

    The confusion matrix counts the held-out cells only (see :func:`held_out_cells`).
    """
    labels = labels_of(data, label_key)
    held_out = held_out_cells(labels)
    hidden = data.obs[label_key].astype(object).where(~held_out, None)
    training = replace(data, obs=data.obs.assign(**{label_key: hidden}))
    model = fit_expression_model(training, label_key, config, progress=progress, should_stop=should_stop)
    view = latent_map(model, data, label_key, held_out=held_out, progress=progress, should_stop=should_stop)
    return model, view
