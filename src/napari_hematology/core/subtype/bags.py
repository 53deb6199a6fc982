"""Bags for slide-level classification: the bag table, the bag-building settings and encoded bags.

A bag is the set of cells of one slide (one patient); only the bag has a label (a genetic subtype), never
a cell. Bags are read from a table (``BAGS.csv``) with one row per cell crop: columns ``bag``, ``image``
and ``label`` (the bag's label on every row; only needed for training), optionally ``patient`` (bags of
one patient never straddle a cross-validation split) and ``blast_probability`` (used when only blasts are
kept; otherwise computed with the cell classifier). Cells are encoded by a frozen, cached cell encoder
(:mod:`napari_hematology.core.subtype.features`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_table
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.subtype.features import (
    CELL_CLASSIFIER,
    blast_scorer,
    encode_files,
    resolve_encoder,
)
from napari_hematology.core.training import TrainConfig

DEFAULT_CLASSES = ("PML_RARA", "NPM1", "CBFB_MYH11", "RUNX1_RUNX1T1", "control")
BAG_COLUMNS = ("bag", "image")


def default_train_config() -> TrainConfig:
    """Training settings that suit bag models: few, large samples."""
    return TrainConfig(epochs=60, batch_size=8, learning_rate=1e-3, weight_decay=1e-2)


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
    blast_threshold: float = DEFAULT_BLAST_THRESHOLD
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
        check_bag_size(name, len(cells), config.min_cells)
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
        should_stop=should_stop)
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


def check_bag_size(bag: str, cells: int, min_cells: int) -> None:
    """Refuse a bag with no cells or fewer than ``min_cells`` (raises InputError naming the bag)."""
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


class BagDataset:
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

