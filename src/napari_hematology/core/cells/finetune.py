"""Fine-tune a cell classifier on a lab's own labelled crops, starting from a base model folder.

The lab's model keeps the base model's architecture, crop size and context, and every metadata key it
does not change, so the folder works wherever a model folder does (``classify --model``, ``analyze
--model``, the widgets). New classes grow the head on purpose only (``add_classes``).

Calibration: with enough cells a stratified share is held out, the network is trained on the rest and a
temperature is fitted on the held-out logits; it is folded into the last layer (weights and bias divided
by it), so every reader of the folder gets calibrated probabilities, and it is stored in the metadata.

    cells, skipped = read_labelled_cells(cells_from_csv("cells.csv"), classifier)
    lab = fine_tune(cells, load_classifier(base_dir))
    save_classifier(lab, "lab_model/")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.augmentation import augment
from napari_hematology.core.cells.classifier import (
    MODEL_NAME,
    CellClassifier,
    adapt_batch_norm,
    fold_temperature,
)
from napari_hematology.core.cells.crop_batches import iter_prepared_crops
from napari_hematology.core.cells.recipe import ClassifierRecipe, save_classifier
from napari_hematology.core.cells.training_data import CellSet
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_table
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.training import TrainConfig

LAB_SOURCE = "lab"
SKIPPED_NAMES_SHOWN = 5
MIN_COMPARED_CELLS = 10
# one step (32 crops of 64 px, two torch threads) on the 2-core machine, reading the crops included
# (benchmarks/results/retrain.json: 111.8 s for 500 steps)
CPU_SECONDS_PER_STEP = 0.22

MAX_UNLABELLED = 2000


def default_finetune_training() -> TrainConfig:
    """Training-loop settings of a fine-tuning run (all layers, a gentler rate than from scratch)."""
    return TrainConfig(epochs=100, batch_size=32, learning_rate=1e-3, weight_decay=1e-4)


@dataclass
class FineTuneConfig:
    """How a base model is fine-tuned on a lab's cells.

    Attributes:
        add_classes: Grow the head for labels the base model does not know, instead of refusing them.
        calibration_share: Share of the cells held out to fit the temperature.
        min_calibration_cells: Fewest cells for which a temperature is fitted; below, the base
            model's calibration is kept.
        stain_jitter: Colour augmentation strength (see :class:`ClassifierRecipe`).
        label_smoothing: Share of each target spread over the other classes in the loss.
        adapt_batch_norm: Re-estimate the BatchNorm statistics on the lab's unaugmented crops after
            training (AdaBN), so they match the lab's images rather than their augmented versions.
        train: Settings of the shared training loop.

    """

    add_classes: bool = False
    calibration_share: float = 0.2
    min_calibration_cells: int = 100
    stain_jitter: float = 1.0
    label_smoothing: float = 0.1
    adapt_batch_norm: bool = True
    train: TrainConfig = field(default_factory=default_finetune_training)


@dataclass
class ReadCells:
    """Crops read for training and the files that could not be used.

    Attributes:
        cells: The usable crops with their labels.
        skipped: ``{"image", "reason"}`` per unusable file.

    """

    cells: CellSet
    skipped: list[dict[str, str]]

    def skipped_message(self) -> str:
        """'N crop(s) skipped (a, b, ...)', or empty when none were."""
        if not self.skipped:
            return ""
        names = ", ".join(Path(item["image"]).name for item in self.skipped[:SKIPPED_NAMES_SHOWN])
        more = ", ..." if len(self.skipped) > SKIPPED_NAMES_SHOWN else ""
        return f"{len(self.skipped)} unreadable crop(s) skipped ({names}{more})."


def cells_from_csv(path: str | Path) -> pd.DataFrame:
    """Read a cells table ``image,label``; image paths are made absolute from the CSV's folder."""
    path = Path(path)
    table = read_table(path, required=("image", "label")).dropna(subset=["image", "label"])
    if table.empty:
        raise InputError(f"{path.name} lists no labelled cells.")
    images = [Path(str(image)) for image in table["image"]]
    return pd.DataFrame(
        {
            "image": [str(image if image.is_absolute() else path.parent / image) for image in images],
            "label": table["label"].astype(str).str.strip().to_numpy(),
        }
    )


def check_labels(labels: Sequence[str], classes: Sequence[str], add_classes: bool) -> list[str]:
    """The classes of the lab's model: the base classes, plus the new labels when ``add_classes``.

    Raises:
        InputError: Some labels are not base classes and ``add_classes`` is off; the message lists them.

    """
    unknown = sorted(set(labels) - set(classes))
    if unknown and not add_classes:
        raise InputError(
            f"Label(s) not among the base model's classes: {', '.join(unknown)}. The base model knows "
            f"{', '.join(classes)}; rename the labels, or pass --add-classes to add them as new classes."
        )
    return [*classes, *unknown]


def read_labelled_cells(
    table: pd.DataFrame,
    classifier: CellClassifier,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> ReadCells:
    """Read and normalise labelled crops the way ``classifier`` sees them; unusable files are skipped.

    Args:
        table: Columns ``image`` (file path) and ``label``.
        classifier: Gives crop size and context.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The usable crops and the skipped files.

    Raises:
        InputError: No crop could be used.

    """
    files = [Path(image) for image in table["image"]]
    skipped: list[dict[str, str]] = []
    chunks = list(
        iter_prepared_crops(
            files,
            classifier.crop_size,
            classifier.context,
            progress=progress,
            should_stop=should_stop,
            on_error=lambda path, error: skipped.append({"image": str(path), "reason": str(error)}),
        )
    )
    unread = {item["image"] for item in skipped}
    kept = np.array([str(path) not in unread for path in files], dtype=bool)
    if not kept.any():
        raise InputError(f"None of the {len(files)} crops could be read; first: {skipped[0]['reason']}")
    names = np.array([str(path) for path in files], dtype=object)[kept]
    cells = CellSet(
        crops=np.concatenate([chunk.crops for chunk in chunks]),
        labels=table["label"].astype(str).to_numpy(dtype=object)[kept],
        sources=np.full(len(names), LAB_SOURCE, dtype=object),
        groups=names,
        files=names,
        noisy=np.zeros(len(names), dtype=bool),
    )
    return ReadCells(cells, skipped)


def fine_tune(
    cells: CellSet,
    base: CellClassifier,
    config: FineTuneConfig | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    unlabelled: np.ndarray | None = None,
) -> CellClassifier:
    """Fine-tune a copy of ``base`` on labelled crops (all layers), calibrated when there are enough.

    Args:
        cells: Normalised crops (as :func:`read_labelled_cells` gives) and their class labels.
        base: The model to start from; it is left unchanged.
        config: Fine-tuning settings.
        progress: Progress callback (per training step).
        should_stop: Cancellation callback.
        unlabelled: More of the lab's normalised crops, labels unknown; with ``adapt_batch_norm`` the
            BatchNorm statistics are re-estimated on them and on ``cells``.

    Returns:
        The lab's classifier, on the CPU; its metadata is the base's plus ``classes``, ``temperature``
        and ``fine_tuning``. Its atypical-score reference is refitted on ``cells`` and ``unlabelled``,
        as fine-tuning moves the embeddings.

    Raises:
        InputError: No cells, or labels the base model does not know (without ``add_classes``).

    """
    config = config or FineTuneConfig()
    if len(cells) == 0:
        raise InputError("No labelled cells to fine-tune on.")
    classes = check_labels(list(cells.labels), base.classes, config.add_classes)
    train_index, calibration_index = calibration_split(cells.labels, config)
    model = _grown_copy(base, len(classes))
    history = _train(model, cells.subset(train_index), classes, config, progress, should_stop)
    lab_crops = cells.crops if unlabelled is None else np.concatenate([cells.crops, unlabelled])
    if config.adapt_batch_norm:
        adapt_batch_norm(model, lab_crops)
    temperature = 1.0
    if len(calibration_index):
        temperature = _fit_temperature(model, cells.subset(calibration_index), classes)
        fold_temperature(model, temperature)
    metadata: dict[str, Any] = {
        **base.metadata,
        "classes": classes,
        "temperature": temperature,
        "fine_tuning": {
            "base_classes": list(base.classes),
            "cells": {str(k): int(v) for k, v in pd.Series(cells.labels).value_counts().items()},
            "calibration_cells": int(len(calibration_index)),
            "config": asdict(config),
            "final_loss": history.loss[-1] if history.loss else None,
            "training_seconds": round(history.seconds, 1),
        },
    }
    lab = CellClassifier(model.eval(), classes, base.crop_size, base.context, metadata)
    lab = lab.with_reference(lab_crops, should_stop)
    lab.model.cpu()
    return lab


def unlabelled_crops(
    paths: Sequence[str | Path],
    base: CellClassifier,
    limit: int = MAX_UNLABELLED,
    should_stop: StopCallback | None = None,
) -> np.ndarray | None:
    """Read up to ``limit`` of a lab's unlabelled crop files, normalised as ``base`` expects.

    They only re-estimate BatchNorm statistics, so unreadable files are left out without a message.

    Returns:
        (k, size, size, 3) uint8 crops, or None when there are none.

    """
    files = [Path(path) for path in paths[:limit]]
    chunks = [
        chunk.crops
        for chunk in iter_prepared_crops(
            files, base.crop_size, base.context, should_stop=should_stop, on_error=lambda path, error: None
        )
    ]
    return np.concatenate(chunks) if chunks else None


def calibration_split(labels: np.ndarray, config: FineTuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions to train on and positions held out for the temperature (none when too few cells)."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    if len(labels) < config.min_calibration_cells:
        return everything, everything[:0]
    counts = pd.Series(labels).value_counts()
    held_out_count = int(np.ceil(config.calibration_share * len(labels)))
    stratify = labels if counts.min() >= 2 and held_out_count >= len(counts) else None
    train_index, held_out = train_test_split(
        everything, test_size=config.calibration_share, stratify=stratify, random_state=config.train.seed
    )
    return np.sort(train_index), np.sort(held_out)


def _grown_copy(base: CellClassifier, num_classes: int):
    """A trainable copy of the base network with ``num_classes`` outputs (new head rows start at zero)."""
    import torch

    from napari_hematology.core.registry import create_model

    model = create_model(MODEL_NAME, **{**base.model.registry_config, "num_classes": num_classes})
    state = {key: value.detach().cpu().clone() for key, value in base.model.state_dict().items()}
    known = len(base.classes)
    for name in ("classifier.weight", "classifier.bias"):
        grown = torch.zeros((num_classes, *state[name].shape[1:]), dtype=state[name].dtype)
        grown[:known] = state[name]
        state[name] = grown
    model.load_state_dict(state)
    return model


def _class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weight per class: inverse square root of its frequency, averaging 1 over the cells."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    return (weights / (weights[targets].mean())).astype(np.float32)


def _train(model, cells: CellSet, classes: list[str], config: FineTuneConfig, progress, should_stop):
    import torch
    import torch.nn.functional as functional

    from napari_hematology.core.training import train

    targets = np.array([classes.index(label) for label in cells.labels], dtype=np.int64)
    weights = torch.from_numpy(_class_weights(targets, len(classes)))
    recipe = ClassifierRecipe(stain_jitter=config.stain_jitter)
    dataset = (
        torch.from_numpy(cells.crops).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(targets),
    )

    def loss_fn(net, batch, epoch):
        images, labels = batch
        logits = net(augment(images.float(), recipe=recipe))
        return functional.cross_entropy(
            logits, labels, weight=weights.to(logits.device), label_smoothing=config.label_smoothing
        )

    train_config = replace(config.train, batch_size=min(config.train.batch_size, max(2, len(cells))))
    return train(model, dataset, loss_fn, train_config, progress=progress, should_stop=should_stop)


def _logits(model, crops: np.ndarray) -> np.ndarray:
    import torch

    from napari_hematology.core.training import predict

    batch = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
    return predict(model, batch)


def _fit_temperature(model, cells: CellSet, classes: list[str]) -> float:
    # the one temperature fit of the package lives with the slide models; it is plain numpy
    from napari_hematology.core.calibration import fit_temperature

    targets = np.array([classes.index(label) for label in cells.labels])
    return fit_temperature(_logits(model, cells.crops).astype(np.float64), targets)


def balanced_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Mean over the true classes of the share of their cells called right."""
    truth, predicted = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    return float(np.mean([np.mean(predicted[truth == name] == name) for name in np.unique(truth)]))


@dataclass
class Comparison:
    """Base model vs fine-tuned model on reviewed cells the fine-tuned model did not train on.

    Attributes:
        before: Balanced accuracy of the base model on the held-out cells.
        after: Balanced accuracy of the fine-tuned model on the same cells.
        cells: Labelled cells in all.
        held_out: Of those, the cells both were scored on.
        trainings: Trainings run (1 when the lab model's calibration cells were the held-out ones).

    """

    before: float
    after: float
    cells: int
    held_out: int
    trainings: int


def comparison_trainings(cells: int, config: FineTuneConfig | None = None) -> int:
    """Trainings :func:`fine_tune_with_comparison` runs on ``cells`` labelled cells.

    One, or two when too few cells fit a temperature (a model without the held-out cells is then trained
    for the comparison).
    """
    config = config or FineTuneConfig()
    return 1 if cells >= config.min_calibration_cells else 2


def training_steps(cells: int, config: FineTuneConfig | None = None) -> int:
    """Optimisation steps of :func:`fine_tune_with_comparison` on ``cells`` labelled cells.

    Lets a caller say before it starts how much work a retraining is (the steps dominate its time).
    """
    config = config or FineTuneConfig()
    batch = min(config.train.batch_size, max(2, cells))
    held_out = int(np.ceil(config.calibration_share * cells))
    trained = [cells - held_out, cells][: comparison_trainings(cells, config)]
    return sum(config.train.epochs * int(np.ceil(count / batch)) for count in trained)


def training_seconds_estimate(steps: int) -> float:
    """Rough seconds of ``steps`` fine-tuning steps on a 2-core CPU (``CPU_SECONDS_PER_STEP`` each)."""
    return steps * CPU_SECONDS_PER_STEP


def fine_tune_with_comparison(
    cells: CellSet,
    base: CellClassifier,
    config: FineTuneConfig | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    unlabelled: np.ndarray | None = None,
) -> tuple[CellClassifier, Comparison]:
    """Fine-tune on all cells and measure base vs fine-tuned accuracy on cells held out from training.

    The held-out cells are the stratified share :func:`fine_tune` keeps back to fit the temperature, so
    with ``min_calibration_cells`` or more cells there is one training: the lab model itself is scored
    on them (the temperature does not change its calls). With fewer, a second model is first trained
    without them for the comparison, and the lab model trains on every cell.

    Args:
        cells: Normalised crops and their labels (at least ``MIN_COMPARED_CELLS``).
        base: The model to start from; it is left unchanged.
        config: Fine-tuning settings.
        progress: Progress callback (per training step, each training from the start).
        should_stop: Cancellation callback.
        unlabelled: More of the lab's crops for the BatchNorm re-estimation (see :func:`fine_tune`).

    Returns:
        The lab's classifier and the comparison.

    Raises:
        InputError: Fewer than ``MIN_COMPARED_CELLS`` cells, or labels the base model does not know.

    """
    config = config or FineTuneConfig()
    if len(cells) < MIN_COMPARED_CELLS:
        raise InputError(
            f"Too few reviewed cells ({len(cells)}) to measure accuracy on held-out cells; review at least "
            f"{MIN_COMPARED_CELLS}."
        )
    check_labels(list(cells.labels), base.classes, config.add_classes)
    train_index, held_out = calibration_split(cells.labels, replace(config, min_calibration_cells=0))
    trainings = comparison_trainings(len(cells), config)
    compared = None
    if trainings == 2:
        compared = fine_tune(cells.subset(train_index), base, config, progress, should_stop)
    lab = fine_tune(cells, base, config, progress, should_stop, unlabelled=unlabelled)
    truth = cells.labels[held_out]
    before = base.predict_prepared(cells.crops[held_out], should_stop=should_stop)["label"]
    after = (compared or lab).predict_prepared(cells.crops[held_out], should_stop=should_stop)["label"]
    comparison = Comparison(
        before=balanced_accuracy(truth, before.to_numpy(dtype=object)),
        after=balanced_accuracy(truth, after.to_numpy(dtype=object)),
        cells=len(cells),
        held_out=len(held_out),
        trainings=trainings,
    )
    return lab, comparison


def fine_tune_files(
    table: pd.DataFrame,
    out_dir: str | Path,
    base_dir: str | Path | None = None,
    config: FineTuneConfig | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> tuple[Path, ReadCells]:
    """Read labelled crop files, fine-tune the base model on them and save the lab's model folder.

    Args:
        table: Columns ``image`` (crop path) and ``label`` (class name).
        out_dir: Model folder to write.
        base_dir: Base model folder; None uses the shipped weights.
        config: Fine-tuning settings.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The model folder, and the cells read (with the skipped files).

    """
    from napari_hematology.core.cells.classifier import load_classifier

    config = config or FineTuneConfig()
    base = load_classifier(base_dir, config.train.device)
    check_labels(list(table["label"].astype(str)), base.classes, config.add_classes)
    read = read_labelled_cells(table, base, progress, should_stop)
    lab = fine_tune(read.cells, base, config, progress, should_stop)
    return save_classifier(lab, out_dir), read
