"""Training recipe of the cell classifier: real single-cell crops, partial labels, stain augmentation.

Data (under the shared data root):

- ``single_cells/all_idb2``: blast vs normal. A normal cell's type is unknown, so its label is the set
  "any class but blast" and the loss maximises the probability of that set (a partial-label loss).
- ``single_cells/bccd_crops``: five white-cell types, one folder per type.
- ``single_cells/wbc_seg``: five types from two labs, labels not checked by experts (down-weighted).

Blasts only come from ALL-IDB2, so a network could learn "ALL-IDB2 look" instead of "blast". ALL-IDB2
normal cells are in training too (same lab, not blast), and every crop is normalised to its nucleus and
white-balanced (:mod:`napari_hematology.core.cells.crops`). Colour augmentation is deliberately mild:
after white balance, the remaining colour differences are mostly the cell's own (chromatin, cytoplasm,
granules), and the stronger stain jitter of earlier versions (hue +-0.35 rad, saturation 0.6-1.5,
gamma 0.7-1.4) erased them. Reducing it to the ranges in :func:`augment`, adding colour statistics to the
network (:mod:`napari_hematology.models.colour_statistics`) and training 100 epochs instead of 60 raised
ALL-IDB2 cross-validated accuracy from 0.725 to the figure in ``benchmarks/results/classifier.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import BLAST, CELL_CLASSES
from napari_hematology.core.cells.classifier import MODEL_NAME, CellClassifier, read_prepared_crops
from napari_hematology.core.cells.crops import CONTEXT, CROP_SIZE
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_table
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.training import TrainConfig
from napari_hematology.models.cell_classifier import DEFAULT_BACKBONE

NORMAL = "normal"
WBC_SEG_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}


def default_recipe_training() -> TrainConfig:
    """Training-loop settings of the shipped weights."""
    return TrainConfig(epochs=100, batch_size=64, learning_rate=3e-3, weight_decay=0.05)


@dataclass
class ClassifierRecipe:
    """Everything that defines how the shipped cell classifier is trained.

    Attributes:
        backbone: timm architecture.
        crop_size: Side of the normalised crops.
        context: Crop side relative to the nucleus size.
        noisy_weight: Loss weight of crops whose labels were not expert-checked (wbc_seg).
        max_blur: Strongest defocus augmentation (0: none, 1: a full 3x3 box blur).
        train: Settings of the shared training loop; its seed also seeds the weights and the folds.

    """

    backbone: str = DEFAULT_BACKBONE
    crop_size: int = CROP_SIZE
    context: float = CONTEXT
    noisy_weight: float = 0.5
    max_blur: float = 0.0
    train: TrainConfig = field(default_factory=default_recipe_training)


@dataclass
class CellSet:
    """Normalised training crops with their (possibly partial) labels.

    Attributes:
        crops: (n, size, size, 3) uint8 normalised crops.
        labels: Label as given by the source: a class name, or ``normal`` (any class but blast).
        sources: Data set each crop comes from (``all_idb2``, ``bccd_crops``, ``wbc_seg``).
        groups: Crops sharing a group (same smear image) are kept in the same cross-validation fold.
        files: Crop file paths.
        noisy: Whether the label was not expert-checked.

    """

    crops: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    groups: np.ndarray
    files: np.ndarray
    noisy: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> CellSet:
        """Select the crops at ``index``."""
        return CellSet(**{name: value[index] for name, value in vars(self).items()})

    def allowed(self, classes: list[str]) -> np.ndarray:
        """(n, classes) boolean matrix of the classes each crop's label allows."""
        allowed = np.zeros((len(self), len(classes)), dtype=bool)
        for row, label in enumerate(self.labels):
            if label == NORMAL:
                allowed[row] = [name != BLAST for name in classes]
            else:
                allowed[row, classes.index(label)] = True
        return allowed


def list_training_crops(data_root: str | Path) -> pd.DataFrame:
    """Find the labelled single-cell crops under the shared data root.

    Args:
        data_root: Folder holding ``single_cells/all_idb2``, ``bccd_crops`` and ``wbc_seg``.

    Returns:
        A table with columns ``file, label, source, group, noisy``.

    Raises:
        InputError: A data set folder or its label table is missing.

    """
    cells = Path(data_root) / "single_cells"
    for name in ("all_idb2", "bccd_crops", "wbc_seg"):
        if not (cells / name).is_dir():
            raise InputError(
                f"{cells / name} not found; --data must be the shared data folder that holds "
                "single_cells/all_idb2, single_cells/bccd_crops and single_cells/wbc_seg."
            )
    return pd.concat(
        [
            _all_idb2_rows(cells / "all_idb2"),
            _bccd_rows(cells / "bccd_crops"),
            _wbc_seg_rows(cells / "wbc_seg"),
        ],
        ignore_index=True)


def _all_idb2_rows(folder: Path) -> pd.DataFrame:
    table = read_table(folder / "labels.csv", required=("image", "label"))
    unknown = set(table["label"]) - {BLAST, NORMAL}
    if unknown:
        raise InputError(f"{folder / 'labels.csv'}: unknown label(s) {sorted(unknown)}; use blast or normal.")
    files = [str(folder / image) for image in table["image"]]
    return pd.DataFrame(
        {"file": files, "label": table["label"], "source": "all_idb2", "group": files, "noisy": False}
    )


def _bccd_rows(folder: Path) -> pd.DataFrame:
    rows = [
        {"file": str(path), "label": path.parent.name.lower(), "source": "bccd_crops",
         "group": path.stem.rsplit("_", 1)[0], "noisy": False}
        for path in sorted((folder / "images").glob("*/*.jpg"))
    ]
    unknown = {row["label"] for row in rows} - set(CELL_CLASSES)
    if unknown:
        raise InputError(f"{folder}: unknown white-cell type folder(s) {sorted(unknown)}.")
    return pd.DataFrame(rows)


def _wbc_seg_rows(folder: Path) -> pd.DataFrame:
    parts = []
    for dataset in ("dataset1", "dataset2"):
        table = read_table(folder / f"{dataset}_labels.csv", required=("image ID",))
        files = [str(folder / dataset / f"{int(image):03d}.bmp") for image in table["image ID"]]
        types = table.iloc[:, 1].map(WBC_SEG_TYPES)  # the class column is named differently per set
        parts.append(pd.DataFrame({
            "file": files, "label": types, "source": "wbc_seg",
            "group": files, "noisy": True,
        }))
    return pd.concat(parts, ignore_index=True)


def load_cell_set(
    data_root: str | Path,
    recipe: ClassifierRecipe | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> CellSet:
    """Read and normalise every labelled training crop under the shared data root.

    Args:
        data_root: The shared data folder.
        recipe: Gives crop size and context.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The crops and labels.

    """
    recipe = recipe or ClassifierRecipe()
    table = list_training_crops(data_root)
    crops = read_prepared_crops(
        [Path(file) for file in table["file"]], recipe.crop_size, recipe.context, progress, should_stop
    )
    return CellSet(
        crops=crops,
        labels=table["label"].to_numpy(dtype=object),
        sources=table["source"].to_numpy(dtype=object),
        groups=table["group"].to_numpy(dtype=object),
        files=table["file"].to_numpy(dtype=object),
        noisy=table["noisy"].to_numpy(dtype=bool))


def sample_weights(cells: CellSet, noisy_weight: float) -> np.ndarray:
    """Loss weights: rare labels count more, labels not checked by experts count less.

    A crop's weight is the inverse square root of its label's frequency within its source, times
    ``noisy_weight`` for noisy sources; weights average 1.
    """
    keys = pd.Series(cells.sources.astype(str)) + "/" + pd.Series(cells.labels.astype(str))
    counts = keys.map(keys.value_counts()).to_numpy(dtype=np.float32)
    weights = 1.0 / np.sqrt(counts)
    weights = np.where(cells.noisy, weights * noisy_weight, weights)
    return (weights / weights.mean()).astype(np.float32)


def augment(images, generator=None, max_blur: float = 0.0):
    """Random stain, illumination, focus and geometry changes of a float (n, 3, h, w) 0..255 batch.

    Args:
        images: Batch of crops as a float tensor.
        generator: Torch random generator, or None for the global one.
        max_blur: Strongest defocus (0: none, 1: a full 3x3 box blur).

    Returns:
        The augmented batch, same shape, values in 0..255.

    """
    import torch
    import torch.nn.functional as functional

    count = images.shape[0]

    def uniform(low: float, high: float, *shape: int):
        return torch.empty(count, *shape, device=images.device).uniform_(low, high, generator=generator)

    angle = uniform(0, 2 * np.pi)
    scale = uniform(0.9, 1.1)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, uniform(-0.08, 0.08)], 1),
         torch.stack([sin * flip, cos, uniform(-0.08, 0.08)], 1)], 1
    )
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = functional.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
    if max_blur > 0:
        blurred = functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        images = torch.lerp(images, blurred, uniform(0, max_blur, 1, 1, 1))
    images = images / 255.0
    gray = images.mean(dim=1, keepdim=True)
    images = gray + (images - gray) * uniform(0.85, 1.15, 1, 1, 1)
    images = _rotate_hue(images, uniform(-0.06, 0.06))
    images = images * uniform(0.95, 1.05, 3, 1, 1) + uniform(-0.03, 0.03, 1, 1, 1)
    images = images.clamp(0, 1) ** uniform(0.9, 1.1, 1, 1, 1)
    return images.clamp(0, 1) * 255.0


def _rotate_hue(images, angle):
    """Rotate colours about the grey axis by ``angle`` radians (one angle per image)."""
    import torch

    axis = torch.full((3,), 1 / np.sqrt(3), device=images.device)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    cross = torch.tensor(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], device=images.device
    )
    outer = torch.outer(axis, axis)
    eye = torch.eye(3, device=images.device)
    rotation = cos * eye + sin * cross + (1 - cos) * outer
    return torch.einsum("nij,njhw->nihw", rotation, images)


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
        The trained classifier (metadata holds the recipe and the training loss).

    """
    import torch

    from napari_hematology.core.registry import create_model
    from napari_hematology.core.training import seeded, train

    recipe = recipe or ClassifierRecipe()
    if len(cells) == 0:
        raise InputError("No training crops; check the --data folder.")
    classes = list(CELL_CLASSES)
    with seeded(recipe.train.seed):
        model = create_model(MODEL_NAME, num_classes=len(classes), backbone=recipe.backbone)
    dataset = (
        torch.from_numpy(cells.crops).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(cells.allowed(classes)),
        torch.from_numpy(sample_weights(cells, recipe.noisy_weight)))

    def loss_fn(net, batch, epoch):
        images, allowed, weights = batch
        return partial_label_loss(
            net(augment(images.float(), max_blur=recipe.max_blur)), allowed, weights
        )

    history = train(model, dataset, loss_fn, recipe.train, progress=progress, should_stop=should_stop)
    metadata: dict[str, Any] = {
        "classes": classes,
        "crop_size": recipe.crop_size,
        "context": recipe.context,
        "recipe": asdict(recipe),
        "training_crops": {str(k): int(v) for k, v in pd.Series(cells.sources).value_counts().items()},
        "final_loss": history.loss[-1] if history.loss else None,
        "training_seconds": round(history.seconds, 1),
    }
    return CellClassifier(model, classes, recipe.crop_size, recipe.context, metadata)


def save_classifier(
    classifier: CellClassifier, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Save a classifier through the registry (safetensors + config.json with its metadata).

    Args:
        classifier: A trained classifier.
        directory: Destination folder (created if needed).
        extra: More metadata to store, such as measured metrics.

    Returns:
        The folder.

    """
    from napari_hematology.core.registry import save_model

    return save_model(classifier.model, directory, {**classifier.metadata, **(extra or {})})


def retrain_classifier(
    data_root: str | Path,
    out_dir: str | Path,
    recipe: ClassifierRecipe | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Path:
    """Train the cell classifier on every labelled crop of the shared data and save it.

    This is the recipe of the shipped weights: ``napari-hematology train-classifier --data DATA --out DIR``.

    Args:
        data_root: The shared data folder.
        out_dir: Where to write the model folder.
        recipe: Training settings (defaults reproduce the shipped weights).
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
