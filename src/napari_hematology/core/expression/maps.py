"""What the Expression widget shows: a 2-D PCA map of the latent, per-cell values and a confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class LatentMap:
    """A fitted model's view of some data.

    Attributes:
        coordinates: (cells, 2) first two principal components of the latent.
        features: Per-cell table: ``cell``, ``label`` (if known), ``predicted``, ``confidence`` and
            ``prob_<class>`` columns.
        confusion: Counts of true (rows) vs. predicted (columns) classes of the labelled cells, or None.
    """

    coordinates: np.ndarray
    features: pd.DataFrame
    confusion: pd.DataFrame | None


def confusion_table(true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Counts of each true class (rows) predicted as each class (columns)."""
    true_classes = sorted(set(true) | set(classes), key=lambda name: (name not in classes, name))
    table = pd.crosstab(pd.Categorical(true, true_classes), pd.Categorical(predicted, classes),
                        dropna=False)
    table.index.name, table.columns.name = "true", "predicted"
    return table


def latent_map(model: ExpressionClassifier, data: ExpressionData, label_key: str | None = None, *,
               progress: ProgressCallback | None = None,
               should_stop: StopCallback | None = None) -> LatentMap:
    """Predict every cell of ``data`` and lay the latent out in 2-D.

    Args:
        model: A fitted classifier.
        data: Cells to show (genes aligned to the model by name).
        label_key: Annotation column with known labels, for the ``label`` column and the confusion matrix.
        progress: Progress callback.
        should_stop: Cancellation callback.
    """
    latent, probabilities = class_probabilities(model, data, progress=progress, should_stop=should_stop)
    features = prediction_table(model, data, probabilities)
    features.insert(2, "confidence", probabilities.max(axis=1).round(4))
    confusion = None
    if label_key:
        labels = labels_of(data, label_key)
        features.insert(1, "label", labels)
        known = labels != ""
        confusion = confusion_table(labels[known], features["predicted"].to_numpy()[known], model.classes)
    return LatentMap(principal_components(latent), features, confusion)


def fit_and_map(data: ExpressionData, label_key: str, config: ExpressionConfig | None = None, *,
                progress: ProgressCallback | None = None,
                should_stop: StopCallback | None = None) -> tuple[ExpressionClassifier, LatentMap]:
    """Fit a classifier on ``data`` and map the same data (what the widget's Train button does)."""
    model = fit_expression_model(data, label_key, config, progress=progress, should_stop=should_stop)
    return model, latent_map(model, data, label_key, progress=progress, should_stop=should_stop)
