"""Cells and labels into and out of a project: CSV tables, labelled crop folders, detected cells."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.labels.store import AnnotationStore

CROP_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MODEL_ANNOTATOR = "classifier"
EXPORTER = "exporter"


def import_labels(
    store: AnnotationStore,
    table,
    *,
    cell_columns: Sequence[str] = ("cell",),
    label_columns: Sequence[str] = ("label",),
    annotator: str = "import",
    source: str = "import",
    add_classes: bool | None = None,
    name: str = "the CSV",
) -> int:
    """Import labels from a table into the project.

    Long tables have one label column (``label``) and optionally ``annotator``, ``image``, ``x``, ``y``,
    ``crop`` columns; wide tables name several label columns, each becoming the labels of an annotator
    of that name (two readers of the same cells, for instance).

    Args:
        store: The open project.
        table: A DataFrame.
        cell_columns: Column(s) that identify a cell; several are joined with ``/``.
        label_columns: Column(s) holding labels.
        annotator: Annotator name for a single label column without an ``annotator`` column.
        source: ``import``, ``human`` or ``model``.
        add_classes: Add unknown classes; None adds them only while the project has no classes yet.
        name: Name of the table in messages.

    Returns:
        The number of labels recorded.

    Raises:
        InputError: Missing columns, empty cell ids, or classes unknown to the project.

    """
    missing = [column for column in (*cell_columns, *label_columns) if column not in table.columns]
    if missing:
        raise InputError(
            f"{name} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, table.columns))}."
        )
    table = table.copy()
    table["_cell"] = table[list(cell_columns)].astype(str).agg("/".join, axis=1)
    if table[list(cell_columns)].isna().any().any():
        raise InputError(f"{name}: some rows have no cell id in {', '.join(cell_columns)}.")
    labelled = table.melt(
        id_vars=[c for c in table.columns if c not in label_columns],
        value_vars=list(label_columns),
        var_name="_column",
        value_name="_label",
    ).dropna(subset=["_label"])
    labelled["_label"] = labelled["_label"].astype(str)
    if len(label_columns) > 1:
        labelled["_annotator"] = labelled["_column"]
    elif "annotator" in labelled.columns:
        labelled["_annotator"] = labelled["annotator"].fillna(annotator).astype(str)
    else:
        labelled["_annotator"] = annotator
    _check_classes(store, sorted(set(labelled["_label"])), add_classes, name)
    store.add_cells([_cell_record(row) for row in table.drop_duplicates("_cell").to_dict("records")])
    for who, group in labelled.groupby("_annotator", sort=False):
        store.set_labels(list(zip(group["_cell"], group["_label"], strict=True)), str(who), source)
    return len(labelled)


def _check_classes(store: AnnotationStore, labels: list[str], add_classes: bool | None, name: str) -> None:
    known = store.classes
    unknown = [label for label in labels if label not in known]
    if add_classes is None:
        add_classes = not known
    if unknown and not add_classes:
        raise InputError(
            f"{name} has class(es) unknown to the project: {', '.join(unknown[:10])}. The project's classes "
            f"are {', '.join(known)}; fix the labels, or add the classes (--add-classes)."
        )
    if unknown:
        store.add_classes(unknown)


def _cell_record(row: dict) -> dict:
    def value(key):
        item = row.get(key)
        return None if item is None or (isinstance(item, float) and item != item) else item

    x, y = value("x"), value("y")
    return {
        "name": row["_cell"],
        "image": value("image"),
        "x": None if x is None else float(x),
        "y": None if y is None else float(y),
        "crop": value("crop"),
    }


def export_labels(store: AnnotationStore, history: bool = False):
    """Return the project's labels as a table ready for CSV.

    Args:
        store: The open project.
        history: Export every event (the audit trail) instead of the current labels.

    Returns:
        A DataFrame; the current-labels table re-imports with ``import_labels`` unchanged.

    """
    return store.history() if history else store.current_labels()


def read_class_mapping(path: str | Path) -> dict[str, str]:
    """Read a mapping CSV ``exporter_name,model_class`` (one row per exporter class name).

    Raises:
        InputError: Columns missing, or an exporter name mapped twice.

    """
    from napari_hematology.core.io import read_table

    table = read_table(path, required=("exporter_name", "model_class")).dropna()
    names = table["exporter_name"].astype(str).str.strip()
    twice = sorted(set(names[names.duplicated()]))
    if twice:
        raise InputError(f"{Path(path).name} maps {', '.join(twice)} more than once; keep one row each.")
    return dict(zip(names, table["model_class"].astype(str).str.strip(), strict=True))


def import_crop_folders(
    store: AnnotationStore,
    folder: str | Path,
    mapping: dict[str, str],
    annotator: str = EXPORTER,
) -> dict[str, int]:
    """Import labelled crops exported one folder per class (as digital-morphology systems do).

    Every class folder's name must be in ``mapping``; nothing is imported otherwise, so no name is
    guessed. Cells are named by their crop path and labelled ``import`` labels of ``annotator``.

    Args:
        store: The open project.
        folder: Folder holding one sub-folder of crops per exporter class.
        mapping: Exporter class name -> the model's class name.
        annotator: Who labelled them (the exporting system or lab).

    Returns:
        Crops imported per model class.

    Raises:
        InputError: No class folders, or folder names missing from the mapping (all listed).

    """
    folder = Path(folder)
    classes = sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    if not classes:
        raise InputError(f"{folder} holds no class folders; it should have one folder of crops per class.")
    unknown = [path.name for path in classes if path.name not in mapping]
    if unknown:
        raise InputError(
            f"Class folder(s) not in the mapping file: {', '.join(unknown)}. Add a row "
            "exporter_name,model_class for each (nothing was imported)."
        )
    crops = [
        (crop, mapping[path.name])
        for path in classes
        for crop in sorted(path.iterdir())
        if crop.suffix.lower() in CROP_SUFFIXES
    ]
    if not crops:
        raise InputError(f"No crop images ({', '.join(CROP_SUFFIXES)}) in the class folders of {folder}.")
    store.add_classes(sorted({label for _, label in crops}))
    names = [str(crop.resolve()) for crop, _ in crops]
    store.add_cells([{"name": name, "crop": name} for name in names])
    store.set_labels([(name, label) for name, (_, label) in zip(names, crops, strict=True)], annotator)
    counts: dict[str, int] = {}
    for _, label in crops:
        counts[label] = counts.get(label, 0) + 1
    return counts


def crops_folder(project: str | Path) -> Path:
    """Where a project keeps the crops of detected cells: ``<project stem>_crops`` next to it."""
    project = Path(project)
    return project.with_name(f"{project.stem}_crops")


def send_to_review(
    project: str | Path,
    slide: str | Path,
    cells,
    crops: Sequence[np.ndarray],
    classes: Sequence[str],
) -> int:
    """Put detected cells of one slide into a review project, with the model's call for each.

    Each crop is saved as a PNG in :func:`crops_folder`; each cell keeps its slide, centroid, crop,
    class probabilities and atypical score, and the model's label is recorded as a ``model`` label of
    annotator ``classifier`` with its probability as confidence.

    Args:
        project: Project file (created if missing).
        slide: Path of the slide or field the cells lie in.
        cells: Per-cell table of blast detection (``cell_id``, ``centroid_x``, ``centroid_y``,
            ``label``, ``prob_<class>``, optionally ``atypical_score``).
        crops: One RGB crop per cell, in table order.
        classes: The classifier's class names.

    Returns:
        The number of cells in the project.

    """
    from PIL import Image

    from napari_hematology.core.io import to_rgb8

    slide = str(slide)
    folder = crops_folder(project)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{Path(slide).stem}-{hashlib.sha1(slide.encode()).hexdigest()[:8]}"
    records, labels, confidences = [], [], []
    for cell, crop in zip(cells.to_dict("records"), crops, strict=True):
        path = folder / f"{prefix}-{int(cell['cell_id'])}.png"
        rgb = crop[..., :3] if crop.dtype == np.uint8 else to_rgb8(crop, path.name)[0]
        Image.fromarray(np.ascontiguousarray(rgb)).save(path)
        probabilities = {name: _number(cell.get(f"prob_{name}")) for name in classes}
        name = f"{slide}#{int(cell['cell_id'])}"
        records.append(
            {
                "name": name,
                "image": slide,
                "x": float(cell["centroid_x"]),
                "y": float(cell["centroid_y"]),
                "crop": str(path),
                "probabilities": probabilities,
                "atypical_score": _number(cell.get("atypical_score")),
            }
        )
        labels.append((name, str(cell["label"])))
        confidences.append(probabilities.get(str(cell["label"])))
    with AnnotationStore(project) as store:
        store.add_classes([*classes, *sorted({label for _, label in labels} - set(classes))])
        count = store.add_cells(records)
        if labels:
            store.set_labels(labels, MODEL_ANNOTATOR, "model", confidences=confidences)
    return count


def send_analysis_to_review(project: str | Path, summary: dict, out_dir: str | Path) -> int:
    """Put every cell of an ``analyze`` run into a review project (see :func:`send_to_review`).

    Args:
        project: Project file (created if missing).
        summary: The run's summary (``images`` with ``image`` and ``cells_table``).
        out_dir: The run's output folder, which holds the cell tables.

    Returns:
        The number of cells in the project.

    """
    import pandas as pd

    from napari_hematology.core.cells.analysis import cut_crops
    from napari_hematology.core.io import read_image

    count = 0
    for item in summary["images"]:
        cells = pd.read_csv(Path(out_dir) / item["cells_table"]).dropna(subset=["label"])
        if cells.empty:
            continue
        classes = [column.removeprefix("prob_") for column in cells.columns if column.startswith("prob_")]
        crops = cut_crops(read_image(item["image"]).data, cells)
        count = send_to_review(project, item["image"], cells, crops, classes)
    return count


def _number(value) -> float | None:
    """A finite float, or None for a missing or NaN value."""
    return None if value is None or not np.isfinite(value) else float(value)
