"""Finding likely-wrong cell labels by confident learning on out-of-fold predicted probabilities.

A small CNN (registry model ``crop_cnn``) is trained from scratch by cross-validation, through the shared
training loop and with a noise-robust loss, on the crops themselves, so each cell's predicted
probabilities come from a network that never saw its label; ``cleanlab`` then estimates the joint
distribution of given and true labels and flags the cells whose given label is probably wrong, with a
suggested class and an issue score (1 - label quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.training import TrainConfig

ISSUE_COLUMNS = ["image", "given", "suggested", "issue_score", "is_issue"]
CELL_COLUMNS = ["image", "label"]
MAX_STEPS = 3000
MIN_EPOCHS = 5
DIHEDRAL = 8
BRIGHTNESS_JITTER = 0.1
PROJECTION_WIDTH = 128
PRETRAIN_BATCH = 64
PRETRAIN_TEMPERATURE = 0.2
VIEW_BRIGHTNESS_JITTER = 0.2
VIEW_SHIFT = 4
VIEW_NOISE = 0.1


def default_issue_training() -> TrainConfig:
    """Training-loop settings of each fold (``auto`` uses a GPU when there is one)."""
    return TrainConfig(epochs=30, batch_size=32, learning_rate=3e-3, weight_decay=1e-3, device="auto")


@dataclass
class IssueConfig:
    """How out-of-fold probabilities are made.

    Attributes:
        folds: Cross-validation folds (reduced to the size of the smallest class if needed).
        loss: Training loss name (see :func:`napari_hematology.core.losses.make_loss`); the default,
            generalized cross-entropy, fits wrong labels least.
        crop_size: Side crops are resized to.
        pretrain_epochs: Epochs of self-supervised contrastive pretraining of the CNN on the crops
            themselves, labels unused, before any training (0 = none). A network that has first learnt
            what the cells look like fits wrong labels less.
        train: Settings of the shared training loop for each fold. ``epochs`` is the most per fold:
            large sets stop after ``MAX_STEPS`` optimisation steps (at least ``MIN_EPOCHS`` epochs);
            ``seed`` also seeds the fold split and the initial weights. Pretraining uses the same
            settings with ``pretrain_epochs`` and its own batch size.

    """

    folds: int = 5
    loss: str = "gce"
    crop_size: int = 48
    pretrain_epochs: int = 0
    train: TrainConfig = field(default_factory=default_issue_training)


@dataclass
class Standardizer:
    """Per-channel standardisation of crops, fitted on training crops only."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, crops: np.ndarray) -> Standardizer:
        """Fit on (cells, height, width, 3) crops."""
        pixels = crops.reshape(-1, crops.shape[-1]).astype(np.float32)
        return cls(pixels.mean(axis=0), pixels.std(axis=0) + 1e-6)

    def __call__(self, crops: np.ndarray):
        """Standardised (cells, 3, height, width) float32 tensor."""
        import torch

        scaled = ((crops.astype(np.float32) - self.mean) / self.scale).astype(np.float32)
        return torch.from_numpy(scaled).permute(0, 3, 1, 2).contiguous()


def encode_labels(labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Turn class names into integer codes (classes sorted by name).

    Raises:
        InputError: A label is missing, or a class has a single cell.

    """
    values = [None if _is_missing(label) else str(label) for label in labels]
    missing = [row for row, value in enumerate(values) if value is None]
    if missing:
        rows = ", ".join(str(row + 2) for row in missing[:5])
        raise InputError(
            f"{len(missing)} cell(s) have no label (CSV line(s) {rows}); fill them in or remove them."
        )
    classes = sorted(set(values))
    if len(classes) < 2:
        raise InputError(
            f"All cells are labelled {classes[0]!r}; finding wrong labels needs two classes or more."
        )
    codes = np.array([classes.index(value) for value in values])
    counts = np.bincount(codes, minlength=len(classes))
    lonely = [name for name, count in zip(classes, counts, strict=True) if count < 2]
    if lonely:
        raise InputError(
            f"Class(es) {', '.join(lonely)} have a single cell; cross-validation needs at least two per "
            "class. "
            "Add cells or merge the class."
        )
    return codes, classes


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def dihedral(images, index: int):
    """One of the 8 rotations and reflections of (batch, channels, H, W) images (0 = identity)."""
    import torch

    if index >= 4:
        images = images.flip(-1)
    return torch.rot90(images, index % 4, (-2, -1))


def augment_crops(images, brightness: float = BRIGHTNESS_JITTER, shift: int = 0, noise: float = 0.0):
    """Randomly rotate and reflect every crop and jitter its brightness per channel.

    Args:
        images: (batch, channels, H, W) standardised crops.
        brightness: Standard deviation of the multiplicative brightness change.
        shift: Largest random shift of the whole batch, in pixels (wrapping around).
        noise: Standard deviation of added pixel noise.

    Returns:
        Augmented copies of ``images``.

    """
    import torch

    images = images.clone()
    choice = torch.randint(0, DIHEDRAL, (len(images),)).to(images.device)
    for index in range(DIHEDRAL):
        chosen = choice == index
        if chosen.any():
            images[chosen] = dihedral(images[chosen], index)
    jitter = torch.randn(len(images), images.shape[1], 1, 1).to(images.device)
    images = images * (1 + brightness * jitter)
    if shift:
        offsets = torch.randint(-shift, shift + 1, (2,))
        images = torch.roll(images, (int(offsets[0]), int(offsets[1])), (-2, -1))
    if noise:
        images = images + noise * torch.randn_like(images)
    return images


def _augmented(loss_fn):
    """Wrap a loss so every batch is randomly rotated, reflected and brightness-jittered per cell."""

    def loss(model, batch, epoch):
        return loss_fn(model, (augment_crops(batch[0]), *batch[1:]), epoch)

    return loss


def _contrastive_loss(model, batch, epoch: int):
    """InfoNCE between two random views of every crop (SimCLR-style pretext task)."""
    from napari_hematology.core.losses import info_nce

    first, second = (
        augment_crops(batch[0], VIEW_BRIGHTNESS_JITTER, VIEW_SHIFT, VIEW_NOISE) for _ in range(2)
    )
    return info_nce(model(first), model(second), PRETRAIN_TEMPERATURE)


def _train_config(config: IssueConfig, wanted_epochs: int, cells: int, batch_size: int) -> TrainConfig:
    """``config.train`` for ``wanted_epochs`` of ``batch_size``, fewer on large sets.

    Large sets stop after about ``MAX_STEPS`` optimisation steps (at least ``MIN_EPOCHS`` epochs).
    """
    steps_per_epoch = -(-cells // batch_size)
    epochs = min(wanted_epochs, max(MIN_EPOCHS, MAX_STEPS // steps_per_epoch))
    return replace(config.train, epochs=epochs, batch_size=batch_size)


def pretrain_crop_encoder(
    crops: np.ndarray,
    config: IssueConfig,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> dict:
    """Pretrain the crop CNN without labels by contrasting two random views of every crop.

    Args:
        crops: (cells, size, size, 3) uint8 crops; their labels are not needed.
        config: Uses ``pretrain_epochs`` (must be > 0) and the training settings but their epochs and
            batch size.
        progress: Called as ``progress(step, total, message)``.
        should_stop: Returns True to cancel.

    Returns:
        The state dict of the CNN without its head, for :func:`fit_classifier`'s ``pretrained``.

    """
    from napari_hematology.core.registry import create_model
    from napari_hematology.core.training import seeded, train

    if config.pretrain_epochs <= 0:
        raise InputError(f"pretrain_epochs must be positive to pretrain, got {config.pretrain_epochs}.")
    with seeded(config.train.seed):
        model = create_model("crop_cnn", out_features=PROJECTION_WIDTH)
    train_config = _train_config(config, config.pretrain_epochs, len(crops), PRETRAIN_BATCH)
    images = Standardizer.fit(crops)(crops)
    train(model, (images,), _contrastive_loss, train_config, progress=progress, should_stop=should_stop)
    return {name: value.detach().cpu() for name, value in model[:-1].state_dict().items()}


def fit_classifier(
    crops: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    config: IssueConfig,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    pretrained: dict | None = None,
):
    """Train the crop CNN with the shared loop and the configured loss.

    Args:
        crops: (cells, size, size, 3) uint8 crops.
        codes: Integer labels.
        n_classes: Number of classes.
        config: Training settings.
        progress: Called as ``progress(step, total, message)``.
        should_stop: Returns True to cancel.
        pretrained: Weights from :func:`pretrain_crop_encoder` to start from (every member of a
            co-teaching pair starts from them, with its own new head); None starts from scratch.

    Returns:
        ``(model, standardizer)``.

    """
    import torch

    from napari_hematology.core.losses import make_loss
    from napari_hematology.core.registry import create_model
    from napari_hematology.core.training import seeded, train

    standardize = Standardizer.fit(crops)
    with seeded(config.train.seed):
        if config.loss == "coteaching":
            model = create_model(
                "coteaching_pair", member="crop_cnn", member_config={"out_features": n_classes}
            )
        else:
            model = create_model("crop_cnn", out_features=n_classes)
    if pretrained is not None:
        for member in getattr(model, "members", [model]):
            member[:-1].load_state_dict(pretrained)
    train_config = _train_config(config, config.train.epochs, len(codes), config.train.batch_size)
    dataset = (standardize(crops), torch.from_numpy(codes.astype(np.int64)))
    loss = _augmented(make_loss(config.loss))
    train(model, dataset, loss, train_config, progress=progress, should_stop=should_stop)
    return model, standardize


def predict_probabilities(model, standardize: Standardizer, crops: np.ndarray) -> np.ndarray:
    """Class probabilities of a classifier made by :func:`fit_classifier`.

    Averaged over the 8 rotations and reflections of every crop (a cell has no orientation).
    """
    import torch

    from napari_hematology.core.training import predict

    images = standardize(crops)
    probabilities = [
        torch.softmax(torch.from_numpy(predict(model, dihedral(images, index))), dim=1)
        for index in range(DIHEDRAL)
    ]
    return torch.stack(probabilities).mean(dim=0).numpy()


def out_of_fold_probabilities(
    crops: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    config: IssueConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> np.ndarray:
    """Predicted class probabilities of every cell from a model trained without it.

    Args:
        crops: (cells, size, size, 3) uint8 crops.
        codes: Integer given labels.
        n_classes: Number of classes.
        config: Fold and training settings.
        progress: Called as ``progress(done, total, message)``.
        should_stop: Returns True to cancel.

    Returns:
        (cells, classes) probabilities.

    """
    from sklearn.model_selection import StratifiedKFold

    config = config or IssueConfig()
    folds = max(2, min(config.folds, int(np.bincount(codes).min())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.train.seed)
    probabilities = np.zeros((len(codes), n_classes), dtype=np.float32)
    # Pretraining sees no labels, so one encoder pretrained on every crop serves all folds.
    pretrained = (
        pretrain_crop_encoder(crops, config, progress=_pretrain_progress(progress), should_stop=should_stop)
        if config.pretrain_epochs > 0
        else None
    )
    for fold, (train_rows, test_rows) in enumerate(splitter.split(crops, codes)):
        check_cancel(should_stop)
        model, standardize = fit_classifier(
            crops[train_rows],
            codes[train_rows],
            n_classes,
            config,
            progress=_fold_progress(progress, fold, folds),
            should_stop=should_stop,
            pretrained=pretrained,
        )
        probabilities[test_rows] = predict_probabilities(model, standardize, crops[test_rows])
    if progress is not None:
        progress(folds, folds, "cross-validation done")
    return probabilities


def _fold_progress(progress: ProgressCallback | None, fold: int, folds: int) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda done, total, _text="": progress(
        fold + done / max(total, 1), folds, f"training fold {fold + 1}/{folds}"
    )


def _pretrain_progress(progress: ProgressCallback | None) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda done, total, _text="": progress(done, total, "pretraining on the crops (no labels)")


def rank_label_issues(codes: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]):
    """Score every cell's label with confident learning.

    Args:
        codes: Integer given labels.
        probabilities: Out-of-fold (cells, classes) probabilities.
        classes: Class names, in code order.

    Returns:
        A DataFrame in input order with ``given``, ``suggested``, ``issue_score`` (0 = label certainly
        right, 1 = certainly wrong; cleanlab's normalized margin: half of one minus the probability of
        the given class plus the largest other probability), ``is_issue`` (flagged by confident
        learning) and ``confidence`` (probability of the suggested class).

    """
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(codes, probabilities, method="normalized_margin")
    # n_jobs=1: cleanlab's worker pool breaks under the spawn start method (macOS, Windows, child processes).
    flagged = find_label_issues(codes, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    suggested = probabilities.argmax(axis=1)
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame(
        {
            "given": names[codes],
            "suggested": names[suggested],
            "issue_score": np.round(1.0 - quality, 6),
            "is_issue": flagged.astype(bool),
            "confidence": np.round(probabilities.max(axis=1), 6),
        }
    )


def find_label_issues_in_crops(
    crops: np.ndarray,
    labels: Sequence[str],
    config: IssueConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
):
    """Cross-validate the crop CNN on ``crops`` and rank the given ``labels`` (input order kept)."""
    codes, classes = encode_labels(labels)
    probabilities = out_of_fold_probabilities(
        crops, codes, len(classes), config, progress=progress, should_stop=should_stop
    )
    return rank_label_issues(codes, probabilities, classes)


def resolve_cell_paths(images: Sequence[str], table_path: str | Path | None) -> list[Path]:
    """Resolve crop paths: absolute as given, relative ones against the table's folder, then the cwd.

    Raises:
        InputError: Some crops do not exist (the first few are named).

    """
    base = Path(table_path).parent if table_path is not None else Path.cwd()
    resolved, missing = [], []
    for image in images:
        path = Path(str(image))
        candidates = [path] if path.is_absolute() else [base / path, path]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            missing.append(str(image))
        resolved.append(found)
    if missing:
        raise InputError(
            f"{len(missing)} cell image(s) not found, e.g. {', '.join(missing[:3])}. Paths are read relative "
            "to the CSV's folder; fix the 'image' column."
        )
    return resolved


def find_label_issues(
    cells,
    config: IssueConfig | None = None,
    *,
    table_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
):
    """Find likely-wrong labels of single-cell crops (the ``label-issues`` command).

    Args:
        cells: A DataFrame with columns ``image`` (crop path) and ``label`` (given class), or a CSV path.
        config: Cross-validation settings.
        table_path: Where the table came from (relative crop paths are resolved against its folder);
            taken from ``cells`` when it is a path.
        progress: Called as ``progress(done, total, message)``.
        should_stop: Returns True to cancel.

    Returns:
        A DataFrame with ``image, given, suggested, issue_score, is_issue, confidence``, one row per cell,
        sorted by ``issue_score`` descending.

    Raises:
        InputError: Missing columns or labels, unreadable crops, a class with a single cell.

    """
    from napari_hematology.core.cells.descriptors import read_crops
    from napari_hematology.core.io import read_table

    config = config or IssueConfig()
    if isinstance(cells, str | Path):
        table_path = cells
        cells = read_table(cells, required=CELL_COLUMNS)
    missing = [column for column in CELL_COLUMNS if column not in cells.columns]
    if missing:
        raise InputError(f"The cell table lacks column(s) {', '.join(missing)}; it needs image,label.")
    if cells.empty:
        raise InputError("The cell table has no rows.")
    encode_labels(list(cells["label"]))
    paths = resolve_cell_paths(list(cells["image"]), table_path)
    crops = read_crops(paths, config.crop_size, progress=progress, should_stop=should_stop)
    issues = find_label_issues_in_crops(
        crops, list(cells["label"]), config, progress=progress, should_stop=should_stop
    )
    issues.insert(0, "image", cells["image"].astype(str).to_numpy())
    return issues.sort_values("issue_score", ascending=False, kind="stable").reset_index(drop=True)
