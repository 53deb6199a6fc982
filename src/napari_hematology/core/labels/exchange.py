"""Label exchange with tables: import labels from a CSV table into a project, export them back."""

from __future__ import annotations

from collections.abc import Sequence

from napari_hematology.core.errors import InputError
from napari_hematology.core.labels.store import AnnotationStore


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
