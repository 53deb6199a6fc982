"""Training recipe of the cell classifier: real single-cell crops from several labs, partial labels.

Data (under the shared data root), each lab its own *source*:

- ``single_cells/pbc``: CellaVision crops from Hospital Clinic Barcelona, eight classes: the five normal
  white-cell types, immature granulocytes, erythroblasts and platelets (trained as ``other``).
- ``single_cells/all_idb2``: blast vs normal. A normal cell's type is unknown, so its label is the set
  of the five normal white-cell types and the loss maximises the probability of that set (a
  partial-label loss).
- ``single_cells/bccd_crops``: five white-cell types, one folder per type.
- ``single_cells/wbc_seg/dataset1`` and ``dataset2``: five types from two labs, labels not checked by
  experts (down-weighted).
- Synthetic crops with no white cell (background and red cells only), also ``other``, so that a crop
  without a white cell is not forced into a white-cell class.

Blasts only come from ALL-IDB2, so a network could learn "ALL-IDB2 look" instead of "blast". ALL-IDB2
normal cells are in training too (same lab, not blast), and every crop is normalised to its nucleus and
white-balanced (:mod:`napari_hematology.core.cells.crops`). Every source weighs the same in the loss
whatever its size, so that the many PBC crops do not make the network a CellaVision specialist.
:func:`augment` changes stain, scale, resolution and focus; how strongly is a recipe setting. The
defaults (colour statistics, mild colour jitter, no blur, 40 epochs) were measured leave-one-source-out
(``benchmarks/bench_any_lab.py``). The one validation source, wbc_seg/dataset2, preferred the network
without colour statistics by 0.39 to 0.36 on its 100 cells, but that recipe was far worse on every
other source (PBC 0.33 against 0.59), so the final pick looked at all sources and their figures count
as "chosen on them". ``docs/cell_classifier.md`` has the table and what it does not reach.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.atypical import save_reference
from napari_hematology.core.cells.classes import (
    BLAST,
    CELL_CLASSES,
    IMMATURE_GRANULOCYTE,
    NORMAL_TYPES,
    OTHER,
)
from napari_hematology.core.cells.classifier import (
    MODEL_NAME,
    CellClassifier,
    fold_temperature,
    read_prepared_crops,
)
from napari_hematology.core.cells.crops import CONTEXT, CROP_SIZE
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_table
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.training import TrainConfig
from napari_hematology.models.cell_classifier import DEFAULT_BACKBONE

NORMAL = "normal"
WBC_SEG_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
PBC_CLASSES = {
    **{name: name for name in NORMAL_TYPES},
    "ig": IMMATURE_GRANULOCYTE,
    "erythroblast": "erythroblast",
    "platelet": OTHER,
}
SYNTHETIC = "synthetic"
REQUIRED_SOURCES = ("all_idb2", "bccd_crops", "wbc_seg", "pbc")


def default_recipe_training() -> TrainConfig:
    """Default training-loop settings: 40 epochs, the schedule of the leave-one-source-out figures."""
    return TrainConfig(epochs=40, batch_size=64, learning_rate=3e-3, weight_decay=0.05)


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
        scale_jitter: Random zoom of 1 +- this.
        max_blur: Strongest defocus augmentation (0: none, 1: a full 3x3 box blur).
        max_downsample: Strongest loss of resolution: half the crops are shrunk by a random factor up to
            this and enlarged back, as a low-resolution camera or objective shows them (1: never).
        grayscale_probability: Share of training crops shown in grey, so that shape and texture must
            carry the call where colour differs between labs.
        colour_statistics: Feed the fixed stain colour statistics to the classifier next to the network.
        per_crop_norm: Centre each crop on its own channel means (removes the crop's stain cast).
        temperature: Softmax temperature folded into the trained model's last layer. The default, 1,
            folds none in: a temperature fitted on left-out sources did not transfer to another one
            (``benchmarks/bench_any_lab.py --stage calibrate``); fine-tuning fits one on a lab's cells.
        per_label_cap: Most crops per source and label (a seeded random choice); 0 keeps all.
        background_crops: Synthetic crops without a white cell, labelled ``other``.
        train: Settings of the shared training loop; its seed also seeds the weights and the folds.

    """

    backbone: str = DEFAULT_BACKBONE
    crop_size: int = CROP_SIZE
    context: float = CONTEXT
    noisy_weight: float = 0.5
    stain_jitter: float = 1.0
    scale_jitter: float = 0.1
    max_blur: float = 0.0
    max_downsample: float = 1.0
    grayscale_probability: float = 0.0
    colour_statistics: bool = True
    per_crop_norm: bool = False
    temperature: float = 1.0
    per_label_cap: int = 150
    background_crops: int = 150
    train: TrainConfig = field(default_factory=default_recipe_training)


@dataclass
class CellSet:
    """Normalised training crops with their (possibly partial) labels.

    Attributes:
        crops: (n, size, size, 3) uint8 normalised crops.
        labels: Label as given by the source: a class name, or ``normal`` (one of the normal types).
        sources: Lab each crop comes from (``all_idb2``, ``bccd_crops``, ``pbc``, ``wbc_seg/dataset1``,
            ``wbc_seg/dataset2``, ``synthetic``).
        groups: Crops sharing a group (same smear image) are kept in the same cross-validation fold.
        files: Crop file paths (empty for synthetic crops).
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
        """Select the crops at ``index`` (integer positions or a boolean mask)."""
        return CellSet(**{name: value[index] for name, value in vars(self).items()})

    def concat(self, other: CellSet) -> CellSet:
        """These crops followed by ``other``'s."""
        return CellSet(
            **{name: np.concatenate([value, getattr(other, name)]) for name, value in vars(self).items()}
        )

    def allowed(self, classes: list[str]) -> np.ndarray:
        """(n, classes) boolean matrix of the classes each crop's label allows."""
        allowed = np.zeros((len(self), len(classes)), dtype=bool)
        for row, label in enumerate(self.labels):
            if label == NORMAL:
                allowed[row] = [name in NORMAL_TYPES for name in classes]
            else:
                allowed[row, classes.index(label)] = True
        return allowed


def list_training_crops(data_root: str | Path) -> pd.DataFrame:
    """Find the labelled single-cell crops under the shared data root.

    Args:
        data_root: Folder holding ``single_cells/all_idb2``, ``bccd_crops``, ``wbc_seg`` and ``pbc``.

    Returns:
        A table with columns ``file, label, source, group, noisy``.

    Raises:
        InputError: A data set folder or its label table is missing.

    """
    cells = Path(data_root) / "single_cells"
    for name in REQUIRED_SOURCES:
        if not (cells / name).is_dir():
            raise InputError(
                f"{cells / name} not found; --data must be the shared data folder that holds "
                + ", ".join(f"single_cells/{source}" for source in REQUIRED_SOURCES)
                + "."
            )
    return pd.concat(
        [
            _all_idb2_rows(cells / "all_idb2"),
            _bccd_rows(cells / "bccd_crops"),
            _wbc_seg_rows(cells / "wbc_seg"),
            _pbc_rows(cells / "pbc"),
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
        parts.append(
            pd.DataFrame(
                {
                    "file": files,
                    "label": types,
                    "source": f"wbc_seg/{dataset}",
                    "group": files,
                    "noisy": True,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _pbc_rows(folder: Path) -> pd.DataFrame:
    """PBC crops; each file is its own group (the files name no patient or smear)."""
    table = read_table(folder / "labels.csv", required=("image", "label"))
    unknown = set(table["label"]) - set(PBC_CLASSES)
    if unknown:
        raise InputError(f"{folder / 'labels.csv'}: unknown label(s) {sorted(unknown)}.")
    files = [str(folder / image) for image in table["image"]]
    return pd.DataFrame(
        {
            "file": files,
            "label": table["label"].map(PBC_CLASSES),
            "source": "pbc",
            "group": files,
            "noisy": False,
        }
    )


def cap_per_label(table: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """Keep at most ``cap`` rows per source and label, a seeded random choice (0 keeps all)."""
    if cap <= 0:
        return table
    shuffled = table.sample(frac=1.0, random_state=seed)
    kept = shuffled.groupby(["source", "label"], sort=False).head(cap)
    return table.loc[table.index.isin(kept.index)].reset_index(drop=True)


def background_crops(count: int, size: int, seed: int) -> np.ndarray:
    """Synthetic normalised crops without a white cell: a pale field with a few pale-centred red cells.

    Args:
        count: Number of crops.
        size: Side in pixels.
        seed: Random seed.

    Returns:
        A (count, size, size, 3) uint8 array.

    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        image = np.ones((size, size, 3)) * rng.uniform(225, 255, 3)
        for _ in range(rng.integers(0, 6)):
            radius = rng.uniform(0.12, 0.35) * size
            distance = np.hypot(rows - rng.uniform(0, size), cols - rng.uniform(0, size)) / radius
            pink = rng.uniform([190, 120, 130], [245, 190, 205])
            pallor = np.clip(1.0 - distance, 0, 1)[..., None] * rng.uniform(0, 0.5)
            image = np.where((distance < 1)[..., None], pink * (1 - pallor) + image * pallor, image)
        crops[index] = np.clip(image + rng.normal(0, rng.uniform(1, 6), image.shape), 0, 255)
    return crops


def load_cell_set(
    data_root: str | Path,
    recipe: ClassifierRecipe | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> CellSet:
    """Read and normalise the labelled training crops under the shared data root.

    Args:
        data_root: The shared data folder.
        recipe: Gives crop size, context, the cap per source and label, and the synthetic crops.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The crops and labels, synthetic background crops last.

    """
    recipe = recipe or ClassifierRecipe()
    table = cap_per_label(list_training_crops(data_root), recipe.per_label_cap, recipe.train.seed)
    crops = read_prepared_crops(
        [Path(file) for file in table["file"]], recipe.crop_size, recipe.context, progress, should_stop
    )
    cells = CellSet(
        crops=crops,
        labels=table["label"].to_numpy(dtype=object),
        sources=table["source"].to_numpy(dtype=object),
        groups=table["group"].to_numpy(dtype=object),
        files=table["file"].to_numpy(dtype=object),
        noisy=table["noisy"].to_numpy(dtype=bool))
    return cells.concat(synthetic_cell_set(recipe.background_crops, recipe.crop_size, recipe.train.seed))


def synthetic_cell_set(count: int, size: int, seed: int) -> CellSet:
    """``count`` synthetic crops without a white cell, labelled ``other``, source ``synthetic``."""
    names = np.array([f"{SYNTHETIC}/{index}" for index in range(count)], dtype=object)
    return CellSet(
        crops=background_crops(count, size, seed),
        labels=np.full(count, OTHER, dtype=object),
        sources=np.full(count, SYNTHETIC, dtype=object),
        groups=names,
        files=np.full(count, "", dtype=object),
        noisy=np.zeros(count, dtype=bool),
    )


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


def augment(images, generator=None, recipe: ClassifierRecipe | None = None):
    """Random stain, illumination, scale, focus and geometry changes of a float (n, 3, h, w) 0..255 batch.

    Args:
        images: Batch of crops as a float tensor.
        generator: Torch random generator, or None for the global one.
        recipe: Gives the strength of the stain, scale and blur changes; None uses the defaults.

    Returns:
        The augmented batch, same shape, values in 0..255.

    """
    import torch
    import torch.nn.functional as functional

    recipe = recipe or ClassifierRecipe()
    count = images.shape[0]
    stain = recipe.stain_jitter

    def uniform(low: float, high: float, *shape: int):
        return torch.empty(count, *shape, device=images.device).uniform_(low, high, generator=generator)

    def around(centre: float, spread: float, *shape: int):
        return uniform(centre - spread, centre + spread, *shape)

    angle = uniform(0, 2 * np.pi)
    scale = around(1.0, recipe.scale_jitter)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, around(0, 0.08)], 1),
            torch.stack([sin * flip, cos, around(0, 0.08)], 1),
        ],
        1,
    )
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = functional.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
    if recipe.max_downsample > 1:
        images = _lower_resolution(images, recipe.max_downsample, uniform(0, 1) < 0.5, generator)
    if recipe.max_blur > 0:
        blurred = functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        images = torch.lerp(images, blurred, uniform(0, recipe.max_blur, 1, 1, 1))
    images = images / 255.0
    gray = images.mean(dim=1, keepdim=True)
    images = gray + (images - gray) * around(1.0, 0.15 * stain, 1, 1, 1).clamp(min=0)
    images = _rotate_hue(images, around(0, 0.06 * stain))
    images = images * around(1.0, 0.05 * stain, 3, 1, 1) + around(0, 0.03 * stain, 1, 1, 1)
    images = images.clamp(0, 1) ** around(1.0, 0.1 * stain, 1, 1, 1).clamp(min=0.3)
    if recipe.grayscale_probability > 0:
        grey = uniform(0, 1, 1, 1, 1) < recipe.grayscale_probability
        images = torch.where(grey, images.mean(dim=1, keepdim=True).expand_as(images), images)
    return images.clamp(0, 1) * 255.0


def _lower_resolution(images, max_factor: float, chosen, generator):
    """Shrink the ``chosen`` images by one random factor in [1, max_factor] and enlarge them back."""
    import torch
    import torch.nn.functional as functional

    factor = float(torch.empty(1).uniform_(1.0, max_factor, generator=generator))
    size = images.shape[-1]
    small = functional.interpolate(images, size=max(4, round(size / factor)), mode="area")
    blurred = functional.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return torch.where(chosen.view(-1, 1, 1, 1), blurred, images)


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
