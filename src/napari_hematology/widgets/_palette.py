"""One palette for every class, cluster and cell-type colour the widgets draw, the report's included.

White-cell classes always have the colours of the CLI report and overlays
(:data:`~napari_hematology.core.cells.classes.CLASS_COLOURS`): a blast is the same red in Blast detection,
Whole slide, the Gallery, the report and every legend. Other categories (clusters, populations, expression
classes) take the categorical colours in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_hematology.core.cells.classes import CLASS_COLOURS, OTHER_COLOUR

# 24 colours chosen to stay apart from each other and readable on both white and dark backgrounds
# (Kelly's and Glasbey's maximally distinct sets, minus near-whites and near-blacks).
CATEGORICAL = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
    "#808000", "#ffd8b1", "#000075", "#a9a9a9", "#00a6a6", "#ff7f7f", "#7f7fff", "#b15928",
)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """``#rrggbb`` of an RGB triple in 0-255."""
    return "#{:02x}{:02x}{:02x}".format(*(int(value) for value in rgb))


def category_colours(names: Sequence[str]) -> dict[str, str]:
    """Give each category a colour of :data:`CATEGORICAL`, in the order the names come.

    Args:
        names: Category names (classes, clusters, cell types), each given once.

    Returns:
        ``{name: "#rrggbb"}``; beyond 24 categories the colours repeat.

    """
    return {name: CATEGORICAL[index % len(CATEGORICAL)] for index, name in enumerate(names)}


def class_colours(names: Sequence[str]) -> dict[str, str]:
    """The colour of each white-cell class as the report draws it (``#rrggbb``).

    Classes the report does not know (a lab model's own) get its colour for "other", as in the report.
    """
    return {name: hex_colour(CLASS_COLOURS.get(name, OTHER_COLOUR)) for name in names}
