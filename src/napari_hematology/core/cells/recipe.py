"""Training recipe of the cell classifier: sources weighed alike, partial labels, augmentation.

The crops, their sources and their (possibly partial) labels come from
:mod:`napari_hematology.core.cells.training_data`. Every source weighs the same in the loss whatever its
size, so that the many PBC crops do not make the network a CellaVision specialist.
:func:`~napari_hematology.core.cells.augmentation.augment` changes stain, scale, resolution and focus; how
strongly is a recipe setting. The defaults (colour statistics, mild colour jitter, no blur, 40 epochs) were
measured leave-one-source-out (``benchmarks/bench_any_lab.py``). The one validation source,
wbc_seg/dataset2, preferred the network without colour statistics by 0.39 to 0.36 on its 100 cells, but
that recipe was far worse on every other source (PBC 0.33 against 0.59), so the final pick looked at all
sources and their figures count as "chosen on them". ``docs/cell_classifier.md`` has the table and what it
does not reach.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.atypical import save_reference
from napari_hematology.core.cells.augmentation import augment
from napari_hematology.core.cells.classes import CELL_CLASSES
from napari_hematology.core.cells.classifier import MODEL_NAME, CellClassifier, fold_temperature
from napari_hematology.core.cells.crops import CONTEXT, CROP_SIZE
from napari_hematology.core.cells.training_data import SYNTHETIC, CellSet, load_cell_set
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.training import TrainConfig
from napari_hematology.models.cell_classifier import DEFAULT_BACKBONE


def default_recipe_training() -> TrainConfig:
    """Default training-loop settings: 20 epochs over every crop and its shifted copy.

    That is about three times the optimisation steps of the earlier 40 epochs over 150 crops per source
    and label, and fits a 2-core CPU in about a quarter of an hour.
    """
    return TrainConfig(epochs=20, batch_size=64, learning_rate=3e-3, weight_decay=0.05)


@dataclass
class ClassifierRecipe:
    """Everything that defines how ``train-classifier`` trains the cell classifier.

    Attributes:
        backbone: timm architecture.
        crop_size: Side of the normalised crops.
        context: Crop side relative to the nucleus size.
        noisy_weight: Loss weight of crops whose labels were not expert-checked (wbc_seg).
        stain_jitter: Strength of the colour augmentation; 1 is mild (saturation 0.85-1.15, hue
            +-0.06 rad, channel gain +-5%, brightness +-0.03, gamma 0.9-1.1), larger values widen every
            range in proportion.
        stain_amounts: Online stain augmentation: each crop's two stain amounts are scaled by a fresh
            factor in ``exp(+-stain_amounts)`` every epoch and its pink stain tilted towards purple
            (0: none).
        scale_jitter: Random zoom of 1 +- this.
        max_blur: Strongest defocus augmentation (0: none, 1: a full 3x3 box blur).
        max_downsample: Strongest loss of resolution: half the crops are shrunk by a random factor up to
            this and enlarged back, as a low-resolution camera or objective shows them (1: never).
        grayscale_probability: Share of training crops shown in grey, so that shape and texture must
            carry the call where colour differs between labs.
        colour_statistics: Feed the fixed stain colour statistics to the classifier next to the network.
        per_crop_norm: Centre each crop on its own channel means (removes the crop's stain cast).
        standardise_stains: Bring each crop's two stain amounts to fixed levels inside the model, in
            training and in use alike (:func:`~napari_hematology.models.cell_classifier.
            standardise_stain_amounts`).
        temperature: Softmax temperature folded into the trained model's last layer. The default, 1,
            folds none in: a temperature fitted on left-out sources did not transfer to another one
            (``benchmarks/bench_any_lab.py --stage calibrate``); fine-tuning fits one on a lab's cells.
        per_label_cap: Most crops per source and label (a seeded random choice); 0 keeps all. The
            default keeps every crop of every source but PBC, whose other 150 per class are never
            trained on: the held-out test crops of the shipped model (listed in its model card).
        shifted_copies: Copies of every crop drawn from the stain-and-camera shift suite
            (:func:`~napari_hematology.core.cells.shifts.random_shift`) before normalisation.
        background_crops: Synthetic crops without a white cell, labelled ``other``.
        train: Settings of the shared training loop; its seed also seeds the weights and the folds.

    """

    backbone: str = DEFAULT_BACKBONE
    crop_size: int = CROP_SIZE
    context: float = CONTEXT
    noisy_weight: float = 0.5
    stain_jitter: float = 1.0
    stain_amounts: float = 0.3
    scale_jitter: float = 0.1
    max_blur: float = 0.0
    max_downsample: float = 1.0
    grayscale_probability: float = 0.0
    colour_statistics: bool = True
    per_crop_norm: bool = False
    standardise_stains: bool = True
    temperature: float = 1.0
    per_label_cap: int = 600
    shifted_copies: int = 1
    background_crops: int = 150
    train: TrainConfig = field(default_factory=default_recipe_training)


def sample_weights(cells: CellSet, noisy_weight: float) -> np.ndarray:
    """Loss weights: every source weighs the same, rare labels count more, unchecked labels less.

    Within a source a crop's weight is the inverse square root of its label's frequency there; each
    source's weights are then scaled to the same total, and crops of noisy sources are multiplied by
    ``noisy_weight``. Weights average 1.
    """
    sources = pd.Series(cells.sources.astype(str))
    keys = sources + "/" + pd.Series(cells.labels.astype(str))
    weights = 1.0 / np.sqrt(keys.map(keys.value_counts()).to_numpy(dtype=np.float64))
    weights /= sources.map(pd.Series(weights).groupby(sources).sum()).to_numpy()
    weights = np.where(cells.noisy, weights * noisy_weight, weights)
    return (weights / weights.mean()).astype(np.float32)


def partial_label_loss(logits, allowed, weights):
    """Weighted negative log of the probability that the class is one of the allowed classes."""
    import torch

    log_probabilities = logits.log_softmax(dim=1)
    allowed_log = torch.logsumexp(log_probabilities.masked_fill(~allowed, float("-inf")), dim=1)
    return -(allowed_log * weights).sum() / weights.sum()


def train_classifier(
    cells: CellSet,
    recipe: ClassifierRecipe | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> CellClassifier:
    """Train a cell classifier from scratch on normalised crops with the shared training loop.

    Args:
        cells: Training crops and labels.
        recipe: Training settings.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The trained classifier (metadata holds the recipe and the training loss), with the reference of
        the atypical score fitted on its real (not synthetic) training crops.

    """
    import torch

    from napari_hematology.core.registry import create_model
    from napari_hematology.core.training import seeded, train

    recipe = recipe or ClassifierRecipe()
    if len(cells) == 0:
        raise InputError("No training crops; check the --data folder.")
    classes = list(CELL_CLASSES)
    with seeded(recipe.train.seed):
        model = create_model(
            MODEL_NAME,
            num_classes=len(classes),
            backbone=recipe.backbone,
            colour_statistics=recipe.colour_statistics,
            per_crop_norm=recipe.per_crop_norm,
            standardise_stains=recipe.standardise_stains,
        )
    dataset = (
        torch.from_numpy(cells.crops).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(cells.allowed(classes)),
        torch.from_numpy(sample_weights(cells, recipe.noisy_weight)),
    )

    def loss_fn(net, batch, epoch):
        images, allowed, weights = batch
        return partial_label_loss(net(augment(images.float(), recipe=recipe)), allowed, weights)

    history = train(model, dataset, loss_fn, recipe.train, progress=progress, should_stop=should_stop)
    fold_temperature(model, recipe.temperature)
    metadata: dict[str, Any] = {
        "temperature": recipe.temperature,
        "classes": classes,
        "crop_size": recipe.crop_size,
        "context": recipe.context,
        "recipe": asdict(recipe),
        "training_crops": {str(k): int(v) for k, v in pd.Series(cells.sources).value_counts().items()},
        "final_loss": history.loss[-1] if history.loss else None,
        "training_seconds": round(history.seconds, 1),
    }
    classifier = CellClassifier(model, classes, recipe.crop_size, recipe.context, metadata)
    return classifier.with_reference(cells.crops[cells.sources != SYNTHETIC], should_stop)


def save_classifier(
    classifier: CellClassifier, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Save a classifier through the registry (safetensors + config.json with its metadata).

    The reference of the atypical score, when the classifier has one, goes next to them.

    Args:
        classifier: A trained classifier.
        directory: Destination folder (created if needed).
        extra: More metadata to store, such as measured metrics.

    Returns:
        The folder.

    """
    from napari_hematology.core.registry import save_model

    folder = save_model(classifier.model, directory, {**classifier.metadata, **(extra or {})})
    save_reference(classifier.reference, folder)
    return folder


def retrain_classifier(
    data_root: str | Path,
    out_dir: str | Path,
    recipe: ClassifierRecipe | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Path:
    """Train the cell classifier on the labelled crops of the shared data (capped per source and label).

    ``napari-hematology train-classifier --data DATA --out DIR`` runs this with the default recipe.

    Args:
        data_root: The shared data folder.
        out_dir: Where to write the model folder.
        recipe: Training settings; None uses the defaults.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The model folder.

    """
    recipe = recipe or ClassifierRecipe()
    cells = load_cell_set(data_root, recipe, progress, should_stop)
    classifier = train_classifier(cells, recipe, progress, should_stop)
    return save_classifier(classifier, out_dir)


def cross_validate(
    cells: CellSet,
    recipe: ClassifierRecipe | None = None,
    folds: int = 5,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> pd.DataFrame:
    """Out-of-fold predictions of the training recipe, folds stratified by source and label.

    Every source is split into ``folds`` parts (BCCD crops of one smear image stay together; ALL-IDB2 and
    wbc_seg crops are their own groups, their files name no smear or patient); each model is
    trained on all other parts with ``recipe`` and predicts the held-out part.

    Args:
        cells: All labelled crops.
        recipe: Training settings.
        folds: Number of folds.
        progress: Progress callback (per training step).
        should_stop: Cancellation callback.

    Returns:
        One row per crop: ``file, source, truth, fold`` and the classifier's output columns.

    """
    from sklearn.model_selection import StratifiedGroupKFold

    recipe = recipe or ClassifierRecipe()
    strata = pd.Series(cells.sources.astype(str)) + "/" + pd.Series(cells.labels.astype(str))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=recipe.train.seed)
    parts = []
    for fold, (train_index, test_index) in enumerate(splitter.split(cells.crops, strata, cells.groups)):
        classifier = train_classifier(cells.subset(train_index), recipe, progress, should_stop)
        held_out = cells.subset(test_index)
        table = classifier.predict_prepared(held_out.crops, should_stop=should_stop)
        table.insert(0, "fold", fold)
        table.insert(0, "truth", held_out.labels)
        table.insert(0, "source", held_out.sources)
        table.insert(0, "file", held_out.files)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)
