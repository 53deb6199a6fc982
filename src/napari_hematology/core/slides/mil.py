"""Slide-level (bag-level) classification by attention multiple-instance learning.

A bag is the set of cells of one slide (one patient); only the bag has a label (a genetic subtype), never
a cell. Cells are encoded by a frozen, cached cell encoder (:mod:`napari_hematology.core.slides.features`),
then a gated-attention model (``attention_mil`` in the registry) is trained with bag labels only through
the shared training loop. Training runs a cross-validation grouped by patient first: its out-of-fold
predictions give the reported metrics and fit a temperature that calibrates the class probabilities of
the final model, which is trained on all bags.

Bags are read from a table (``BAGS.csv``) with one row per cell crop: columns ``bag``, ``image`` and
``label`` (the bag's label on every row; only needed for training), optionally ``patient`` (bags of one
patient never straddle a cross-validation split) and ``blast_probability`` (used when only blasts are
kept; otherwise computed with the cell classifier).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.io import read_table, write_table
from napari_hematology.core.slides.features import (
    CELL_CLASSIFIER,
    blast_scorer,
    encode_crops,
    encode_files,
    resolve_encoder,
)
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.training import TrainConfig, train

MODEL_NAME = "attention_mil"
DEFAULT_CLASSES = ("PML_RARA", "NPM1", "CBFB_MYH11", "RUNX1_RUNX1T1", "control")
BAG_COLUMNS = ("bag", "image")
ATTENTION_FILE = "attention.csv"


def default_train_config() -> TrainConfig:
    """Training settings that suit bag models: few, large samples."""
    return TrainConfig(epochs=60, batch_size=8, learning_rate=1e-3, weight_decay=1e-2, device="cpu")


@dataclass
class MilConfig:
    """How bags are built and the bag model trained.

    Attributes:
        classes: Bag classes in output order; None = the labels found in the table (the default subtypes
            PML_RARA, NPM1, CBFB_MYH11, RUNX1_RUNX1T1, control first, in that order, then others sorted).
        encoder: Cell encoder spec (``cell_classifier``, ``cell_classifier:MODEL_DIR``,
            ``descriptors``).
        blasts_only: Keep only the cells the cell classifier calls blasts.
        blast_threshold: Blast probability from which a cell counts as a blast.
        min_cells: Fewest cells a bag may have (after blast filtering, bags with too few blasts keep
            their ``min_cells`` most blast-like cells).
        branch_per_class: One attention branch per class (SCEMILA) instead of one shared branch.
        hidden: Width of the per-cell embedding.
        dropout: Dropout on the per-cell embedding.
        instance_dropout: Fraction of cells hidden at random from each bag in each training step.
        folds: Cross-validation folds grouped by patient (for metrics and calibration); 0 or 1 = none.
        cache_dir: Feature cache folder; None = user cache; "" = no caching.
        train: Settings of the shared training loop.

    """

    classes: tuple[str, ...] | None = None
    encoder: str = CELL_CLASSIFIER
    blasts_only: bool = False
    blast_threshold: float = 0.5
    min_cells: int = 2
    branch_per_class: bool = False
    hidden: int = 128
    dropout: float = 0.25
    instance_dropout: float = 0.2
    folds: int = 5
    cache_dir: str | None = None
    train: TrainConfig = field(default_factory=default_train_config)


@dataclass
class Bags:
    """Encoded bags.

    Attributes:
        names: Bag names.
        features: Per bag, a ``(cells, d)`` float32 array.
        cells: Per bag, the identifiers of its cells (image paths, or label ids in a slide).
        labels: Per bag, its label, or None when predicting.
        groups: Per bag, the patient it belongs to (the bag name when unknown).
        notes: Things the user should know about how the bags were built.

    """

    names: list[str]
    features: list[np.ndarray]
    cells: list[list[Any]]
    labels: list[str] | None = None
    groups: list[str] | None = None
    notes: list[str] = field(default_factory=list)


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


# ----------------------------------------------------------------------------------------------- bags


def read_bags_table(path: str | Path, require_labels: bool = False) -> pd.DataFrame:
    """Read ``BAGS.csv``; image paths are taken relative to the table's folder.

    Args:
        path: The table.
        require_labels: Whether a ``label`` column is needed (training).

    Returns:
        The table with ``image`` made absolute and ``bag`` (and ``label``, ``patient``) as strings.

    Raises:
        InputError: Missing file or columns, empty table, or empty bag/image cells.

    """
    path = Path(path)
    required = BAG_COLUMNS + (("label",) if require_labels else ())
    table = read_table(path, required=required)
    if table.empty:
        raise InputError(f"{path.name} has no rows; it needs one row per cell crop ({', '.join(required)}).")
    for column in required:
        blank = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if blank.any():
            rows = ", ".join(str(i + 2) for i in np.flatnonzero(blank)[:5])
            raise InputError(f"{path.name}: empty '{column}' on line(s) {rows}; fill it in or drop the row.")
    table = table.copy()
    for column in ("bag", "label", "patient"):
        if column in table:
            table[column] = table[column].astype(str).str.strip()
    table["image"] = [str(_resolve(path.parent, image)) for image in table["image"].astype(str)]
    return table


def _resolve(folder: Path, image: str) -> Path:
    candidate = Path(image.strip()).expanduser()
    return candidate if candidate.is_absolute() else folder / candidate


def resolve_classes(
    labels: list[str], classes: tuple[str, ...] | None, bag_names: list[str]
) -> tuple[str, ...]:
    """Check bag labels against the configured classes (or derive the classes from the labels).

    Raises:
        InputError: A bag's label is not a class (naming the bag), a class has no bag, or fewer than two
            classes.

    """
    found = set(labels)
    if classes is None:
        classes = tuple(c for c in DEFAULT_CLASSES if c in found) + tuple(
            sorted(found - set(DEFAULT_CLASSES))
        )
    for name, label in zip(bag_names, labels, strict=True):
        if label not in classes:
            raise InputError(
                f"bag {name!r} has label {label!r}, which is not one of the classes {', '.join(classes)}. "
                "Fix the label or add the class."
            )
    empty = [c for c in classes if c not in found]
    if empty:
        raise InputError(f"No bag has class(es) {', '.join(empty)}; add bags of them or leave them out.")
    if len(classes) < 2:
        raise InputError(f"All bags have label {classes[0]!r}; training needs bags of at least two classes.")
    return tuple(classes)


def encode_bags(
    table: pd.DataFrame,
    config: MilConfig,
    with_labels: bool = True,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Bags:
    """Encode the cells of a bag table into bags (features cached per file).

    Args:
        table: From :func:`read_bags_table`.
        config: Encoder, blast filtering and minimum bag size.
        with_labels: Take each bag's label from the ``label`` column (which must agree within a bag).
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The bags, in order of first appearance in the table.

    Raises:
        InputError: Unreadable images, bags with conflicting labels or too few cells (naming the bag).

    """
    owners = dict(zip(table["image"], table["bag"], strict=True))
    images = list(dict.fromkeys(table["image"]))
    encoder = resolve_encoder(config.encoder)
    row_of = {image: i for i, image in enumerate(images)}
    features = encode_files(
        images, encoder, config.cache_dir, owners=owners, progress=progress, should_stop=should_stop
    )
    blast = _blast_probabilities(table, images, config, owners, progress, should_stop)
    bags = Bags(names=[], features=[], cells=[], labels=[] if with_labels else None, groups=[])
    for name, rows in table.groupby("bag", sort=False):
        check_cancel(should_stop)
        cells = list(dict.fromkeys(rows["image"]))
        if blast is not None:
            cells = _keep_blasts(name, cells, blast, config, bags.notes)
        _check_size(name, len(cells), config.min_cells)
        bags.names.append(str(name))
        bags.cells.append(cells)
        bags.features.append(features[[row_of[c] for c in cells]])
        bags.groups.append(str(rows["patient"].iloc[0]) if "patient" in rows else str(name))
        if with_labels:
            bags.labels.append(_bag_label(name, rows))
    return bags


def _blast_probabilities(table, images, config, owners, progress, should_stop) -> dict[str, float] | None:
    if not config.blasts_only:
        return None
    if "blast_probability" in table:
        return dict(zip(table["image"], table["blast_probability"].astype(float), strict=True))
    scores = encode_files(
        images,
        blast_scorer(classifier_dir(config.encoder)),
        config.cache_dir,
        owners=owners,
        progress=progress,
        should_stop=should_stop,
    )
    return dict(zip(images, scores[:, 0].tolist(), strict=True))


def _keep_blasts(bag: str, cells: list, blast: dict, config: MilConfig, notes: list[str]) -> list:
    indices, fell_back = blast_indices(np.array([blast[c] for c in cells]), config)
    if fell_back:
        notes.append(
            f"bag {bag!r}: fewer than {config.min_cells} predicted blasts; kept its "
            f"{config.min_cells} most blast-like cells."
        )
    return [cells[i] for i in indices]


def blast_indices(probability: np.ndarray, config: MilConfig) -> tuple[np.ndarray, bool]:
    """Find the cells counted as blasts: their sorted indices, and whether too few were found.

    With fewer than ``config.min_cells`` blasts, the ``min_cells`` most blast-like cells are kept instead.
    """
    kept = np.flatnonzero(probability >= config.blast_threshold)
    if len(kept) >= config.min_cells:
        return kept, False
    return np.sort(np.argsort(-probability, kind="stable")[: config.min_cells]), True


def classifier_dir(encoder: str) -> str | None:
    """Return the cell-classifier model folder named in an encoder spec (None = the shipped default)."""
    return encoder.partition(":")[2] or None if encoder.startswith(CELL_CLASSIFIER) else None


def _check_size(bag: str, cells: int, min_cells: int) -> None:
    if cells == 0:
        raise InputError(f"bag {bag!r} is empty; every bag needs at least {min_cells} cell(s).")
    if cells < min_cells:
        raise InputError(
            f"bag {bag!r} has only {cells} cell(s); a slide-level prediction needs at least {min_cells}. "
            "Add its cells or drop the bag (or lower the minimum bag size)."
        )


def _bag_label(bag: str, rows: pd.DataFrame) -> str:
    labels = rows["label"].unique()
    if len(labels) != 1:
        raise InputError(
            f"bag {bag!r} has several labels ({', '.join(map(str, labels))}); a bag has one label."
        )
    return str(labels[0])


# ------------------------------------------------------------------------------------------- training


class _BagDataset:
    """Bags as a torch-style dataset of ``(features, class index)``."""

    def __init__(self, features: list[np.ndarray], targets: np.ndarray) -> None:
        import torch

        self.items = [
            (torch.as_tensor(f, dtype=torch.float32), int(t)) for f, t in zip(features, targets, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def pad_bags(items: list[tuple[Any, int]]):
    """Collate bags of different sizes into ``(features, mask, targets)`` padded to the largest bag."""
    import torch

    size = max(len(f) for f, _ in items)
    width = items[0][0].shape[1]
    features = torch.zeros(len(items), size, width)
    mask = torch.zeros(len(items), size, dtype=torch.bool)
    for i, (bag, _) in enumerate(items):
        features[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    return features, mask, torch.tensor([t for _, t in items])


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
        _BagDataset(features, targets),
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


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Find the temperature that minimises the negative log-likelihood of held-out logits.

    It is kept within [0.5, 20]: when every held-out bag is right, the likelihood keeps growing as the
    temperature falls, and sharpening beyond 2x would only make the model overconfident.
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        probabilities = softmax(logits, float(np.exp(log_t)))
        return -float(np.mean(np.log(probabilities[np.arange(len(targets)), targets] + 1e-12)))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.5), np.log(20.0)), method="bounded").x))


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
    metrics["nll_uncalibrated"] = _nll(softmax(logits), targets)
    metrics["folds"] = n_folds
    return CrossValidation(fold, logits, probabilities, temperature, metrics)


def _nll(probabilities: np.ndarray, targets: np.ndarray) -> float:
    return -float(np.mean(np.log(probabilities[np.arange(len(targets)), targets] + 1e-12)))


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
        "nll": _nll(probabilities, targets),
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


def load_mil_model(
    directory: str | Path, expected_classes: tuple[str, ...] | list[str] | None = None
) -> MilModel:
    """Load a bag model saved by :meth:`MilModel.save`.

    Args:
        directory: Model folder.
        expected_classes: If given, refuse a model trained for other classes.

    Raises:
        ModelFileError: Not an attention-MIL model folder, or trained for other classes.

    """
    from napari_hematology.core.registry import load_model

    model, metadata = load_model(directory, expected_name=MODEL_NAME)
    classes = tuple(metadata.get("classes") or ())
    if not classes or "encoder" not in metadata:
        raise ModelFileError(f"{directory}: the model's config.json lacks its classes or encoder.")
    if expected_classes is not None and set(expected_classes) != set(classes):
        raise ModelFileError(
            f"{directory} was trained for classes {', '.join(classes)}, not {', '.join(expected_classes)}. "
            "Pick a model trained for these classes, or retrain."
        )
    return MilModel(model, classes, metadata["encoder"], metadata)


# ----------------------------------------------------------------------------------------- prediction


def predict_bags(mil: MilModel, bags: Bags) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibrated class probabilities per bag and attention per cell.

    Args:
        mil: A trained model.
        bags: Bags encoded with the model's encoder.

    Returns:
        ``(predictions, attention)``: one row per bag (``bag, predicted, prob_<class>...``) and one row
        per cell (``bag, cell, attention``). With one attention branch per class, a cell's attention is
        that of the predicted class's branch.

    Raises:
        InputError: The features do not have the width the model was trained on.

    """
    expected = int(mil.metadata.get("feature_dim", bags.features[0].shape[1]))
    for name, features in zip(bags.names, bags.features, strict=True):
        if features.shape[1] != expected:
            raise InputError(
                f"bag {name!r}: cells have {features.shape[1]} features but the model expects {expected} "
                f"(encoder {mil.encoder}); encode the cells with the model's encoder."
            )
    logits, attention = bag_outputs(mil.model, bags.features)
    probabilities = softmax(logits, float(mil.model.temperature))
    predicted = probabilities.argmax(1)
    predictions = pd.DataFrame({"bag": bags.names, "predicted": [mil.classes[i] for i in predicted]})
    for i, name in enumerate(mil.classes):
        predictions[f"prob_{name}"] = probabilities[:, i]
    rows = []
    for name, cells, weights, winner in zip(bags.names, bags.cells, attention, predicted, strict=True):
        branch = weights[winner] if len(weights) > 1 else weights[0]
        rows.append(pd.DataFrame({"bag": name, "cell": cells, "attention": branch}))
    return predictions, pd.concat(rows, ignore_index=True)


def bag_config_from_model(mil: MilModel, cache_dir: str | None = None) -> MilConfig:
    """Return the bag-building settings a model was trained with (encoder, blast filter, min size)."""
    settings = mil.metadata.get("settings", {})
    return MilConfig(
        encoder=mil.encoder,
        blasts_only=bool(settings.get("blasts_only", False)),
        blast_threshold=float(settings.get("blast_threshold", 0.5)),
        min_cells=int(settings.get("min_cells", 2)),
        cache_dir=cache_dir,
    )


# ------------------------------------------------------------------------------- table entry points


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


def predict_from_table(
    model_dir: str | Path,
    bags_csv: str | Path,
    out_csv: str | Path,
    *,
    expected_classes: tuple[str, ...] | None = None,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every bag of ``BAGS.csv``; write ``out_csv`` and ``attention.csv`` next to it.

    A ``label`` column in the table is ignored.

    Returns:
        ``(predictions, attention)`` as written (attention with columns ``bag, image, attention``).

    """
    mil = load_mil_model(model_dir, expected_classes)
    table = read_bags_table(bags_csv)
    bags = encode_bags(
        table,
        bag_config_from_model(mil, cache_dir),
        with_labels=False,
        progress=progress,
        should_stop=should_stop,
    )
    predictions, attention = predict_bags(mil, bags)
    attention = attention.rename(columns={"cell": "image"})
    out_csv = Path(out_csv)
    write_table(out_csv, predictions)
    write_table(out_csv.with_name(ATTENTION_FILE), attention)
    return predictions, attention


# ------------------------------------------------------------------------------------ cells in a slide


@dataclass
class SlidePrediction:
    """Bag-level prediction for the cells of one image.

    Attributes:
        probabilities: Calibrated probability per class.
        predicted: The most probable class.
        cells: One row per cell: ``label`` (id in the label image), ``centroid_y``, ``centroid_x``,
            ``attention`` (and ``blast_probability`` when only blasts were used; excluded cells have NaN
            attention).

    """

    probabilities: dict[str, float]
    predicted: str
    cells: pd.DataFrame


def cell_crops(
    image: np.ndarray, labels: np.ndarray, margin: float = 0.25, name: str = "image"
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Square crops around every labelled cell (bounding box plus a margin), as RGB uint8.

    Returns:
        A table (``label, centroid_y, centroid_x``) and the crops in the same order.

    Raises:
        InputError: Image and labels differ in size, or there is no labelled cell.

    """
    from skimage.measure import regionprops

    if image.shape[:2] != labels.shape[:2]:
        raise InputError(
            f"{name} is {image.shape[1]}x{image.shape[0]} but its cell labels are "
            f"{labels.shape[1]}x{labels.shape[0]}; pick the labels made from this image."
        )
    regions = regionprops(np.asarray(labels).astype(np.int64, copy=False))
    if not regions:
        raise InputError(
            f"{name}: the cell labels contain no cell; segment the cells first (blast detection)."
        )
    crops, rows = [], []
    height, width = labels.shape[:2]
    for region in regions:
        top, left, bottom, right = region.bbox
        half = (1 + margin) * max(bottom - top, right - left) / 2
        cy, cx = (top + bottom) / 2, (left + right) / 2
        y0, y1 = int(max(cy - half, 0)), int(min(cy + half, height))
        x0, x1 = int(max(cx - half, 0)), int(min(cx + half, width))
        crops.append(np.ascontiguousarray(image[y0:y1, x0:x1, :3]))
        rows.append((region.label, *region.centroid))
    return pd.DataFrame(rows, columns=["label", "centroid_y", "centroid_x"]), crops


def predict_cells(
    image: np.ndarray,
    labels: np.ndarray,
    mil: MilModel | str | Path,
    *,
    name: str = "image",
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SlidePrediction:
    """Predict the slide class of one image from its labelled cells.

    Args:
        image: RGB image ``(Y, X, 3)``.
        labels: Cell label image of the same size.
        mil: A trained model, or its folder.
        name: Name of the image (the bag) in messages.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        Class probabilities and per-cell attention.

    """
    from napari_hematology.core.io import to_rgb8

    mil = mil if isinstance(mil, MilModel) else load_mil_model(mil)
    rgb, _ = to_rgb8(np.asarray(image), name=name)
    cells, crops = cell_crops(rgb, np.asarray(labels), name=name)
    settings = bag_config_from_model(mil)
    keep = np.ones(len(crops), dtype=bool)
    if settings.blasts_only:
        scorer = blast_scorer(classifier_dir(settings.encoder))
        cells["blast_probability"] = encode_crops(crops, scorer, should_stop=should_stop)[:, 0]
        keep[:] = False
        keep[blast_indices(cells["blast_probability"].to_numpy(), settings)[0]] = True
    _check_size(name, int(keep.sum()), settings.min_cells)
    kept_crops = [crop for crop, flag in zip(crops, keep, strict=True) if flag]
    features = encode_crops(
        kept_crops, resolve_encoder(mil.encoder), progress=progress, should_stop=should_stop
    )
    bags = Bags(names=[name], features=[features], cells=[cells["label"][keep].tolist()])
    predictions, attention = predict_bags(mil, bags)
    cells["attention"] = np.nan
    cells.loc[keep, "attention"] = attention["attention"].to_numpy()
    probabilities = {c: float(predictions[f"prob_{c}"].iloc[0]) for c in mil.classes}
    return SlidePrediction(probabilities, str(predictions["predicted"].iloc[0]), cells)


def predict_slide(
    image_path: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SlidePrediction:
    """Segment the white cells of one slide image and predict its class with a bag model.

    Writes ``labels.tif`` (cell labels), ``cells.csv`` (one row per cell with its attention) and
    ``prediction.csv`` (``image, predicted, prob_<class>...``) to ``out_dir``.

    Args:
        image_path: Smear image.
        model_dir: Bag model folder.
        out_dir: Output folder (created).
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The prediction.

    """
    from napari_hematology.core.io import read_image, write_labels
    from napari_hematology.core.cells.segmentation import segment_image

    mil = load_mil_model(model_dir)
    image = read_image(image_path)
    segmentation = segment_image(
        image.data, name=Path(image_path).name, progress=progress, should_stop=should_stop
    )
    result = predict_cells(
        np.asarray(image.data),
        segmentation.labels,
        mil,
        name=Path(image_path).name,
        progress=progress,
        should_stop=should_stop,
    )
    out_dir = Path(out_dir)
    write_labels(out_dir / "labels.tif", segmentation.labels)
    write_table(out_dir / "cells.csv", result.cells)
    summary = {"image": str(image_path), "predicted": result.predicted}
    summary.update({f"prob_{name}": p for name, p in result.probabilities.items()})
    write_table(out_dir / "prediction.csv", pd.DataFrame([summary]))
    return result
