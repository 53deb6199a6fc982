"""Training data of the cell classifier: real single-cell crops from several labs, partial labels.

Data (under the shared data root), each lab its own *source*:

- ``single_cells/pbc``: CellaVision crops from Hospital Clinic Barcelona, eight classes: the five normal
  white-cell types, immature granulocytes, erythroblasts and platelets (trained as ``other``).
- ``single_cells/all_idb2``: blast vs normal. A normal cell's type is unknown, so its label is the set
  of the five normal white-cell types and the loss maximises the probability of that set (a
  partial-label loss).
- ``single_cells/bccd_crops``: five white-cell types, one folder per type.
- ``single_cells/wbc_seg/dataset1`` and ``dataset2``: five types from two labs, labels not checked by
  experts (down-weighted).
- Shifted copies of the crops (``recipe.shifted_copies``): each a random draw of the stain-and-camera
  shift suite (:mod:`napari_hematology.core.cells.shifts`) applied before normalisation, so that the
  classifier sees the stains, lamps and optics of labs it has no crops from.
- Synthetic crops with no white cell (background and red cells only), also ``other``, so that a crop
  without a white cell is not forced into a white-cell class.

Blasts only come from ALL-IDB2, so a network could learn "ALL-IDB2 look" instead of "blast". ALL-IDB2
normal cells are in training too (same lab, not blast), and every crop is normalised to its nucleus and
white-balanced (:mod:`napari_hematology.core.cells.crops`). How the crops are weighed and trained on is
:mod:`napari_hematology.core.cells.recipe`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import (
    BLAST,
    CELL_CLASSES,
    IMMATURE_GRANULOCYTE,
    NORMAL_TYPES,
    OTHER,
)
from napari_hematology.core.cells.crop_batches import read_prepared_crops
from napari_hematology.core.cells.shifts import random_shift
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_table
from napari_hematology.core.progress import ProgressCallback, StopCallback

if TYPE_CHECKING:
    from napari_hematology.core.cells.recipe import ClassifierRecipe

NORMAL = "normal"
WBC_SEG_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
PBC_CLASSES = {
    **{name: name for name in NORMAL_TYPES},
    "ig": IMMATURE_GRANULOCYTE,
    "erythroblast": "erythroblast",
    "platelet": OTHER,
}
SYNTHETIC = "synthetic"
SHIFTED_MARK = "#shifted"  # file-name suffix of the shifted copies of a crop
SHIFT_SIDE = 192
REQUIRED_SOURCES = ("all_idb2", "bccd_crops", "wbc_seg", "pbc")


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
    from napari_hematology.core.cells.recipe import ClassifierRecipe  # the recipe module imports this one

    recipe = recipe or ClassifierRecipe()
    table = cap_per_label(list_training_crops(data_root), recipe.per_label_cap, recipe.train.seed)
    files = [Path(file) for file in table["file"]]
    crops = read_prepared_crops(files, recipe.crop_size, recipe.context, progress, should_stop)
    cells = _cell_set(table, crops)
    for copy in range(1, recipe.shifted_copies + 1):
        shifted = read_prepared_crops(
            files,
            recipe.crop_size,
            recipe.context,
            progress,
            should_stop,
            transform=partial(shifted_crop, seed=recipe.train.seed + copy),
        )
        cells = cells.concat(_cell_set(table, shifted, f"{SHIFTED_MARK}{copy}"))
    return cells.concat(synthetic_cell_set(recipe.background_crops, recipe.crop_size, recipe.train.seed))


def held_out_crops(data_root: str | Path, recipe: ClassifierRecipe | None = None) -> pd.DataFrame:
    """The labelled crops that ``recipe`` does not train on (those its per-label cap leaves out).

    With the default recipe these are 150 PBC crops per class: the test crops of the shipped model.

    Returns:
        The rows of :func:`list_training_crops` left out of training.
    """
    from napari_hematology.core.cells.recipe import ClassifierRecipe  # the recipe module imports this one

    recipe = recipe or ClassifierRecipe()
    table = list_training_crops(data_root)
    trained = set(cap_per_label(table, recipe.per_label_cap, recipe.train.seed)["file"])
    return table[~table["file"].isin(trained)].reset_index(drop=True)


def _cell_set(table: pd.DataFrame, crops: np.ndarray, mark: str = "") -> CellSet:
    """The crops of ``table``'s files; ``mark`` is appended to the file names of shifted copies."""
    return CellSet(
        crops=crops,
        labels=table["label"].to_numpy(dtype=object),
        sources=table["source"].to_numpy(dtype=object),
        groups=table["group"].to_numpy(dtype=object),
        files=(table["file"].astype(str) + mark).to_numpy(dtype=object),
        noisy=table["noisy"].to_numpy(dtype=bool),
    )


def shifted_crop(rgb: np.ndarray, path: Path, seed: int) -> np.ndarray:
    """A random draw of the stain-and-camera shift suite applied to one crop (seeded by its file name).

    The crop is first shrunk to at most :data:`SHIFT_SIDE` pixels: the normalised crop is smaller still,
    and the shifts cost in proportion to the pixels.
    """
    from PIL import Image

    scale = SHIFT_SIDE / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))
    generator = np.random.default_rng([seed, zlib.crc32(str(path).encode())])
    return random_shift(rgb, generator)


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
