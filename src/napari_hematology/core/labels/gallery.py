"""A review gallery as data: a project's cells with their current class, grouped and laid out on a grid.

Each class is a block of rows on the grid: one header row, then its cells, most doubtful first (lowest
probability of the shown class, or highest atypical score). The widget draws the tiles; here is only
which cell goes where.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from napari_hematology.core.errors import InputError
from napari_hematology.core.labels.agreement import consensus
from napari_hematology.core.labels.store import AnnotationStore

ORDERS = ("probability", "atypical_score")
GALLERY_COLUMNS = ["cell", "image", "x", "y", "crop", "label", "probability", "atypical_score", "reviewed"]


def gallery_cells(
    store: AnnotationStore,
    annotator: str,
    images: Sequence[str] | None = None,
    unreviewed_only: bool = True,
    limit: int | None = None,
) -> pd.DataFrame:
    """The project's cells with crops and the class each is shown under.

    The shown class is the annotator's own label, else the reviewers' consensus, else the imported
    label, else the model's. ``probability`` is the model's probability of that class (NaN when unknown).

    Args:
        store: The open project.
        annotator: The reviewer.
        images: Keep cells of these slides only (None keeps all).
        unreviewed_only: Leave out cells the annotator already labelled.
        limit: Most cells to return (a page), in project order.

    Returns:
        A DataFrame with columns :data:`GALLERY_COLUMNS`.

    """
    labels = store.current_labels()
    table = store.cells().dropna(subset=["crop"]).set_index("cell")
    if images is not None:
        table = table[table["image"].isin(list(images))]
    own = labels[labels["annotator"] == annotator].set_index("cell")["label"]
    shown = own.reindex(table.index).astype(object)
    for source in ("human", "import", "model"):
        votes = consensus(labels, sources=(source,)).dropna(subset=["consensus"]).set_index("cell")
        shown = shown.where(shown.notna(), votes["consensus"].reindex(table.index))
    table["label"] = shown
    table["reviewed"] = table.index.isin(own.index)
    table = table.dropna(subset=["label"])
    if unreviewed_only:
        table = table[~table["reviewed"]]
    if limit is not None:
        table = table.iloc[:limit]
    table["probability"] = [
        np.nan if not probabilities else probabilities.get(label, np.nan)
        for probabilities, label in zip(table["probabilities"], table["label"], strict=True)
    ]
    table["atypical_score"] = table["atypical_score"].astype(float)
    return table.reset_index()[GALLERY_COLUMNS]


def grid_layout(
    cells: pd.DataFrame, classes: Sequence[str], columns: int, order: str = "probability"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Place cells on a grid: one block of rows per class, a header row on top of each.

    Args:
        cells: Table with ``label``, ``probability`` and ``atypical_score``.
        classes: Class order of the blocks (labels not in it come after, by name).
        columns: Tiles per row.
        order: ``probability`` (least sure first) or ``atypical_score`` (most atypical first).

    Returns:
        ``(placed, headers)``: ``placed`` is ``cells`` in display order with ``row`` and ``col``;
        ``headers`` has ``label, row, count`` per block.

    """
    if order not in ORDERS:
        raise InputError(f"Unknown gallery order {order!r}; choose one of {', '.join(ORDERS)}.")
    if columns < 1:
        raise InputError("A gallery needs at least one column.")
    present = set(cells["label"])
    blocks = [name for name in classes if name in present] + sorted(present - set(classes))
    ascending = order == "probability"
    placed, headers, row = [], [], 0
    for name in blocks:
        group = cells[cells["label"] == name].sort_values(
            order, ascending=ascending, na_position="first", kind="stable"
        )
        headers.append({"label": name, "row": row, "count": len(group)})
        position = np.arange(len(group))
        placed.append(group.assign(row=row + 1 + position // columns, col=position % columns))
        row += 1 + -(-len(group) // columns)
    if not placed:
        return cells.assign(row=pd.Series(dtype=int), col=pd.Series(dtype=int)), pd.DataFrame(
            columns=["label", "row", "count"]
        )
    return pd.concat(placed).reset_index(drop=True), pd.DataFrame(headers)
