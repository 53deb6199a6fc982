"""One categorical palette for every class, cluster and cell-type colour the widgets draw."""

from __future__ import annotations

from collections.abc import Sequence

# 24 colours chosen to stay apart from each other and readable on both white and dark backgrounds
# (Kelly's and Glasbey's maximally distinct sets, minus near-whites and near-blacks).
CATEGORICAL = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
    "#808000", "#ffd8b1", "#000075", "#a9a9a9", "#00a6a6", "#ff7f7f", "#7f7fff", "#b15928",
)


def category_colours(names: Sequence[str]) -> dict[str, str]:
    """Give each category a colour of :data:`CATEGORICAL`, in the order the names come.

    Args:
        names: Category names (classes, clusters, cell types), each given once.

    Returns:
        ``{name: "#rrggbb"}``; beyond 24 categories the colours repeat.

    """
    return {name: CATEGORICAL[index % len(CATEGORICAL)] for index, name in enumerate(names)}
