"""Agreement between annotators of a project: per-cell consensus, Cohen's kappa and the confusion matrix.

Both work on the table of :meth:`napari_hematology.core.labels.store.AnnotationStore.current_labels`.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_hematology.core.errors import InputError


def consensus(labels, sources: Sequence[str] = ("human",)):
    """Per-cell majority label among the current labels of the given sources.

    Args:
        labels: A table from :meth:`AnnotationStore.current_labels`.
        sources: Which label sources vote (by default people only).

    Returns:
        A DataFrame ``cell, consensus, votes, agreement`` (agreement = share of votes for the majority;
        ``consensus`` is empty when the top classes tie).

    """
    import numpy as np
    import pandas as pd

    voting = labels[labels["source"].isin(list(sources))].dropna(subset=["label"])
    if voting.empty:
        return pd.DataFrame(columns=["cell", "consensus", "votes", "agreement"])
    # votes per cell and class, then the top class of each cell and the count of its runner-up
    counts = voting.groupby(["cell", "label"], sort=False).size().reset_index(name="n")
    ranked = counts.sort_values("n", ascending=False, kind="stable")
    top = ranked.drop_duplicates("cell")
    runner_up = ranked.drop(index=top.index).drop_duplicates("cell").set_index("cell")["n"]
    cells = pd.unique(voting["cell"])
    top = top.set_index("cell").reindex(cells)
    votes = counts.groupby("cell", sort=False)["n"].sum().reindex(cells)
    tie = runner_up.reindex(cells).eq(top["n"]).to_numpy()
    return pd.DataFrame(
        {
            "cell": cells,
            "consensus": np.where(tie, None, top["label"].to_numpy(dtype=object)),
            "votes": votes.to_numpy(dtype=int),
            "agreement": (top["n"] / votes).to_numpy(dtype=float),
        }
    )


def agreement(labels, first: str, second: str) -> dict:
    """Cohen's kappa and the confusion matrix between two annotators on the cells both labelled.

    Args:
        labels: A table from :meth:`AnnotationStore.current_labels`.
        first: Annotator name (rows of the confusion matrix).
        second: Annotator name (columns).

    Returns:
        ``{"first", "second", "cells", "observed_agreement", "kappa", "confusion"}``, the confusion matrix a
        DataFrame indexed by ``first``'s labels.

    Raises:
        InputError: An annotator is unknown or they share no cell.

    """
    import pandas as pd
    from sklearn.metrics import cohen_kappa_score

    known = set(labels["annotator"])
    for name in (first, second):
        if name not in known:
            raise InputError(
                f"No labels by {name!r}; annotators in this project: {', '.join(sorted(known))}."
            )
    paired = pd.merge(
        labels[labels["annotator"] == first][["cell", "label"]],
        labels[labels["annotator"] == second][["cell", "label"]],
        on="cell",
        suffixes=("_first", "_second"),
    )
    if paired.empty:
        raise InputError(f"{first!r} and {second!r} have labelled no cell in common.")
    classes = sorted(set(paired["label_first"]) | set(paired["label_second"]))
    confusion = pd.crosstab(paired["label_first"], paired["label_second"]).reindex(
        index=classes, columns=classes, fill_value=0
    )
    confusion.index.name, confusion.columns.name = first, second
    agree = float((paired["label_first"] == paired["label_second"]).mean())
    single_class = len(classes) == 1
    kappa = 1.0 if single_class else float(cohen_kappa_score(paired["label_first"], paired["label_second"]))
    return {
        "first": first,
        "second": second,
        "cells": len(paired),
        "observed_agreement": agree,
        "kappa": kappa,
        "confusion": confusion,
    }
