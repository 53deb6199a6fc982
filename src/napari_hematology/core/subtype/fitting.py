"""Training the attention-MIL bag model: fitting, grouped cross-validation, calibration and metrics.

A gated-attention model (``attention_mil`` in the registry) is trained with bag labels only through the
shared training loop. Training runs a cross-validation grouped by patient first: its out-of-fold
predictions give the reported metrics and fit a temperature that calibrates the class probabilities of
the final model, which is trained on all bags.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_hematology.core.calibration import fit_temperature, negative_log_likelihood, softmax
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.subtype.bags import (
    BagDataset,
    Bags,
    MilConfig,
    encode_bags,
    pad_bags,
    read_bags_table,
    resolve_classes,
)
from napari_hematology.core.training import seeded, train

MODEL_NAME = "attention_mil"


@dataclass
class MilModel:
    """A trained bag model with what is needed to use it."""

    model: Any
    classes: tuple[str, ...]
    encoder: str
    metadata: dict[str, Any]

    def save(self, directory: str | Path) -> Path:
        """Save through the registry (safetensors + config.json with classes, encoder and metrics)."""
        from napari_hematology.core.registry import save_model

        return save_model(self.model, directory, self.metadata)


@dataclass
class CrossValidation:
    """Out-of-fold results of a grouped cross-validation."""

    fold: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    temperature: float
    metrics: dict[str, Any]


def fit_bag_model(
    features: list[np.ndarray],
    targets: np.ndarray,
    n_classes: int,
    config: MilConfig,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
):
    """Train one attention-MIL model on encoded bags with the shared training loop.

    Args:
        features: Per bag, ``(cells, d)`` features.
        targets: Per bag, its class index.
        n_classes: Number of classes.
        config: Model and training settings.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The trained model (eval mode, CPU), temperature 1.

    """
    import torch
    import torch.nn.functional as F

    from napari_hematology.core.registry import create_model

    with seeded(config.train.seed):
        model = create_model(
            MODEL_NAME,
            in_features=int(features[0].shape[1]),
            n_classes=n_classes,
            hidden=config.hidden,
            dropout=config.dropout,
            branch_per_class=config.branch_per_class,
        )
    instances = np.concatenate(features)
    model.feature_mean.copy_(torch.as_tensor(instances.mean(0)))
    model.feature_std.copy_(torch.as_tensor(instances.std(0) + 1e-6))
    counts = np.bincount(targets, minlength=n_classes).astype(np.float32)
    class_weight = torch.as_tensor(counts.sum() / (n_classes * np.maximum(counts, 1)))

    def loss_fn(net, batch, epoch):
        bag_features, mask, batch_targets = batch
        logits, _ = net(bag_features, _drop_instances(mask, config.instance_dropout))
        return F.cross_entropy(logits, batch_targets, weight=class_weight.to(logits.device))

    train(
        model,
        BagDataset(features, targets),
        loss_fn,
        config.train,
        progress=progress,
        should_stop=should_stop,
        collate_fn=pad_bags,
    )
    return model.cpu().eval()


def _drop_instances(mask, rate: float):
    import torch

    if rate <= 0:
        return mask
    kept = mask & (torch.rand(mask.shape, device=mask.device) >= rate)
    emptied = ~kept.any(dim=1)
    kept[emptied] = mask[emptied]
    return kept


def bag_outputs(model, features: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Uncalibrated logits ``(bags, classes)`` and per-bag attention ``(branches, cells)``."""
    import torch

    logits, attention = [], []
    with torch.no_grad():
        for bag in features:
            bag_logits, bag_attention = model(torch.as_tensor(bag, dtype=torch.float32))
            logits.append(bag_logits[0].numpy())
            attention.append(bag_attention[0].numpy())
    return np.stack(logits), attention


def grouped_folds(targets: np.ndarray, groups: list[str], folds: int, seed: int = 0) -> np.ndarray:
    """Assign each bag a fold, stratified by class, never splitting a patient (group) across folds.

    Returns:
        Fold index per bag, or an empty array when there are too few patients for ``folds`` folds.

    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups))
    folds = min(folds, n_groups)
    if folds < 2:
        return np.zeros(0, dtype=int)
    assignment = np.zeros(len(targets), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes rarer than folds: fine, stratify anyway
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(targets)), targets, groups)):
            assignment[test] = fold
    return assignment


def cross_validate(
    features: list[np.ndarray],
    targets: np.ndarray,
    groups: list[str],
    classes: tuple[str, ...],
    config: MilConfig,
    fold: np.ndarray | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> CrossValidation | None:
    """Cross-validate grouped by patient: out-of-fold logits, a fitted temperature and bag metrics.

    Args:
        features: Per bag, ``(cells, d)`` features.
        targets: Class index per bag.
        groups: Patient per bag.
        classes: Class names.
        config: Settings (``folds`` and training).
        fold: Precomputed fold per bag (e.g. to share folds with a baseline); None = :func:`grouped_folds`.
        progress: Progress callback (reports folds).
        should_stop: Cancellation callback.

    Returns:
        The results, or None when there are too few patients to cross-validate.

    """
    fold = grouped_folds(targets, groups, config.folds, config.train.seed) if fold is None else fold
    if len(fold) == 0:
        return None
    n_folds = int(fold.max()) + 1
    logits = np.zeros((len(targets), len(classes)), dtype=np.float32)
    for k in range(n_folds):
        check_cancel(should_stop)
        if progress is not None:
            progress(k, n_folds + 1, f"cross-validation fold {k + 1}/{n_folds}")
        train_idx, test_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model = fit_bag_model(
            [features[i] for i in train_idx],
            targets[train_idx],
            len(classes),
            config,
            should_stop=should_stop,
        )
        logits[test_idx] = bag_outputs(model, [features[i] for i in test_idx])[0]
    temperature = fit_temperature(logits, targets)
    probabilities = softmax(logits, temperature)
    metrics = bag_metrics(targets, probabilities, classes)
    metrics["nll_uncalibrated"] = negative_log_likelihood(softmax(logits), targets)
    metrics["folds"] = n_folds
    return CrossValidation(fold, logits, probabilities, temperature, metrics)


def bag_metrics(targets: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1, macro one-vs-rest AUROC and log-loss of bag predictions."""
    from sklearn.metrics import f1_score, roc_auc_score

    predicted = probabilities.argmax(1)
    per_class = f1_score(targets, predicted, labels=list(range(len(classes))), average=None, zero_division=0)
    metrics: dict[str, Any] = {
        "bags": int(len(targets)),
        "accuracy": float(np.mean(predicted == targets)),
        "macro_f1": float(np.mean(per_class)),
        "f1": {c: float(f) for c, f in zip(classes, per_class, strict=True)},
        "nll": negative_log_likelihood(probabilities, targets),
    }
    if len(np.unique(targets)) == len(classes):
        if len(classes) == 2:
            metrics["auroc"] = float(roc_auc_score(targets, probabilities[:, 1]))
        else:
            metrics["auroc"] = float(
                roc_auc_score(targets, probabilities, multi_class="ovr", labels=list(range(len(classes))))
            )
    return metrics


def train_mil(
    bags: Bags,
    config: MilConfig,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> MilModel:
    """Cross-validate (metrics, calibration), then train the bag model on all bags.

    Args:
        bags: Encoded bags with labels.
        config: Settings.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The trained, calibrated model with its metadata (classes, encoder, metrics, settings).

    Raises:
        InputError: Missing or unknown labels, a class without bags.

    """
    if bags.labels is None:
        raise InputError("The bags have no labels; training needs a 'label' column.")
    classes = resolve_classes(bags.labels, config.classes, bags.names)
    targets = np.array([classes.index(label) for label in bags.labels])
    groups = bags.groups or bags.names
    validation = cross_validate(
        bags.features, targets, groups, classes, config, progress=progress, should_stop=should_stop
    )
    model = fit_bag_model(
        bags.features, targets, len(classes), config, progress=progress, should_stop=should_stop
    )
    temperature = validation.temperature if validation else 1.0
    model.temperature.fill_(temperature)
    notes = list(bags.notes)
    if validation is None:
        notes.append("Too few patients to cross-validate: no metrics, probabilities not calibrated.")
    settings = asdict(config)
    settings.pop("cache_dir")
    metadata = {
        "task": "slide-level classification (attention MIL)",
        "classes": list(classes),
        "encoder": config.encoder,
        "feature_dim": int(bags.features[0].shape[1]),
        "temperature": temperature,
        "bags": len(bags.names),
        "cells": int(sum(len(f) for f in bags.features)),
        "class_counts": {c: int(np.sum(targets == i)) for i, c in enumerate(classes)},
        "cross_validation": validation.metrics if validation else None,
        "settings": settings,
        "notes": notes,
    }
    return MilModel(model, classes, config.encoder, metadata)


def train_from_table(
    bags_csv: str | Path,
    out_dir: str | Path,
    config: MilConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> MilModel:
    """Read ``BAGS.csv`` (bag, image, label), encode, train and save the model to ``out_dir``.

    Returns:
        The saved model.

    """
    config = config or MilConfig()
    table = read_bags_table(bags_csv, require_labels=True)
    bags = encode_bags(table, config, with_labels=True, progress=progress, should_stop=should_stop)
    mil = train_mil(bags, config, progress=progress, should_stop=should_stop)
    mil.metadata["training_table"] = str(Path(bags_csv).name)
    mil.save(out_dir)
    return mil

