"""Clustering results back where the lab works: FCS with cluster parameters, AnnData, a marker summary.

The marker summary (median of each channel per cluster) helps name clusters that come unnamed.
FCS values must be numbers, so a cluster parameter holds the cluster number (-1 where a stage did not
cluster the event) and the names travel in a keyword ``<STAGE>_NAMES`` holding a JSON object
``{"number": "name"}``. In ``.h5ad`` files the cluster is a categorical column of names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.cytometry.fcs import FcsSample, channel_indices, read_fcs
from napari_hematology.core.errors import InputError

FCS_DELIMITER = "/"
# Keywords that describe the stored layout, which the writer sets anew; $PnE is dropped because the values
# written are linear floats (log channel numbers were made linear on reading).
LAYOUT_KEYWORD = re.compile(r"^(p\d+[bens]|nextdata|begin\w+|end\w+|byteord|datatype|mode|par|tot)$")
MARKED_SPREAD = 1.0


@dataclass
class ClusterAssignment:
    """One clustering stage's result for every event of a sample.

    Attributes:
        labels: Cluster number per event; -1 where the stage did not cluster the event.
        probability: Probability of the assigned cluster per event (NaN where unassigned).
        names: Cluster names indexed by cluster number, or None to keep numbers.
        stage: Name of the parameter / column (``cluster`` for a one-stage run).

    """

    labels: np.ndarray
    probability: np.ndarray
    names: list[str] | None = None
    stage: str = "cluster"

    def named(self) -> pd.Categorical:
        """The clusters as a categorical of names (or numbers as text); unassigned events are missing."""
        labels = np.asarray(self.labels, dtype=int)
        categories = self.names or [str(k) for k in range(labels.max(initial=-1) + 1)]
        return pd.Categorical.from_codes(np.where(labels >= 0, labels, -1), categories=categories)


def write_fcs_with_clusters(
    source: FcsSample | str | Path, out_path: str | Path, assignments: list[ClusterAssignment]
) -> Path:
    """Write a file's events again with each stage's cluster and its probability as new parameters.

    Args:
        source: The sample (or the FCS file to read it from).
        out_path: The FCS 3.1 file to write (float values; the source's keywords are carried over).
        assignments: One per stage, each with one label per event.

    Returns:
        ``out_path``.

    Raises:
        InputError: An assignment does not have one label per event, or names a stage twice.

    """
    import flowio

    sample = source if isinstance(source, FcsSample) else read_fcs(source)
    _check_assignments(sample, assignments)
    names, markers = list(sample.names), list(sample.markers)
    metadata = _carried_keywords(sample)
    columns = [sample.events]
    for assignment in assignments:
        number = len(names) + 1
        labels = np.asarray(assignment.labels, dtype=np.float64)
        names += [assignment.stage, f"{assignment.stage}_probability"]
        markers += [assignment.stage, f"probability of the assigned {assignment.stage}"]
        metadata[f"p{number}r"] = str(int(max(labels.max(initial=0), len(assignment.names or [])) + 1))
        metadata[f"p{number + 1}r"] = "1"
        if assignment.names:
            metadata[f"{assignment.stage}_names"] = json.dumps(dict(enumerate(assignment.names)))
        columns.append(np.column_stack([labels, np.nan_to_num(assignment.probability, nan=0.0)]))
    events = np.column_stack(columns).astype(np.float32)
    out_path = Path(out_path)
    with open(out_path, "wb") as handle:
        flowio.create_fcs(handle, events.ravel(), names, opt_channel_names=markers, metadata_dict=metadata)
    return out_path


def cluster_names_from_keywords(keywords: dict[str, str], stage: str = "cluster") -> dict[int, str]:
    """Cluster names written by :func:`write_fcs_with_clusters` (empty when the clusters are unnamed)."""
    text = keywords.get(f"{stage.lower()}_names", "")
    return {int(k): v for k, v in json.loads(text).items()} if text else {}


def write_h5ad(
    out_path: str | Path,
    samples: list[FcsSample],
    assignments: list[list[ClusterAssignment]],
    channels: list[str] | None = None,
    preprocessed: list[np.ndarray] | None = None,
) -> Path:
    """Write events x channels of a batch as AnnData, with sample, clusters and probabilities in ``obs``.

    Args:
        out_path: The ``.h5ad`` file to write.
        samples: The batch.
        assignments: Per sample, one assignment per stage (the same stages for every sample).
        channels: Channels for ``X`` (``$PnN`` or ``$PnS`` names); None takes every channel of the first
            sample.
        preprocessed: Per sample, the clustered (compensated, transformed) values of ``channels``, stored
            as the layer ``preprocessed``.

    Returns:
        ``out_path``. ``X`` holds the values as read; ``var`` is indexed by ``$PnN`` with a ``marker``
        column; ``obs`` has ``sample``, ``<stage>`` (categorical names) and ``<stage>_probability``.

    Raises:
        InputError: A channel is missing, or an assignment does not have one label per event.

    """
    import anndata

    channels = channels or list(samples[0].names)
    for sample, per_stage in zip(samples, assignments, strict=True):
        _check_assignments(sample, per_stage)
    columns = channel_indices(samples[0], channels)
    x = np.concatenate([s.events[:, channel_indices(s, channels)] for s in samples]).astype(np.float32)
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(
                [s.name for s in samples for _ in range(len(s.events))], categories=[s.name for s in samples]
            )
        },
        index=[f"{s.stem}:{k}" for s in samples for k in range(len(s.events))],
    )
    for per_sample in zip(*assignments, strict=True):
        name = per_sample[0].stage
        obs[name] = _concatenate_categoricals([a.named() for a in per_sample])
        obs[f"{name}_probability"] = np.concatenate([a.probability for a in per_sample]).astype(np.float32)
    var = pd.DataFrame(
        {"marker": [samples[0].markers[c] for c in columns]}, index=[samples[0].names[c] for c in columns]
    )
    adata = anndata.AnnData(X=x, obs=obs, var=var)
    if preprocessed is not None:
        adata.layers["preprocessed"] = np.concatenate(preprocessed).astype(np.float32)
    out_path = Path(out_path)
    adata.write_h5ad(out_path)
    return out_path


def marker_summary(
    values: np.ndarray, labels: np.ndarray, channels: list[str], names: list[str] | None = None
) -> pd.DataFrame:
    """Median of each channel per cluster, to help name clusters that come unnamed.

    Args:
        values: Events x channels on the clustered (transformed) scale.
        labels: Cluster number per event; negative numbers are left out.
        channels: Channel names, in the column order of ``values``.
        names: Cluster names by number; None uses the numbers.

    Returns:
        One row per cluster (index: name) with ``events``, ``fraction``, the median of each channel, and
        ``high`` / ``low``: the channels whose median lies at least one spread (interquartile range of all
        events) above / below the median of all events, e.g. ``CD3 CD4`` for helper T cells.

    """
    labels = np.asarray(labels)
    assigned = labels >= 0
    overall = np.median(values[assigned], axis=0)
    spread = np.subtract(*np.percentile(values[assigned], [75, 25], axis=0))
    rows = []
    for label in np.unique(labels[assigned]):
        members = labels == label
        medians = np.median(values[members], axis=0)
        shift = (medians - overall) / np.where(spread > 0, spread, 1.0)
        rows.append(
            {
                "cluster": names[label] if names else str(label),
                "events": int(members.sum()),
                "fraction": float(members.sum() / assigned.sum()),
                **dict(zip(channels, medians, strict=True)),
                "high": " ".join(c for c, s in zip(channels, shift, strict=True) if s >= MARKED_SPREAD),
                "low": " ".join(c for c, s in zip(channels, shift, strict=True) if s <= -MARKED_SPREAD),
            }
        )
    return pd.DataFrame(rows).set_index("cluster")


def _check_assignments(sample: FcsSample, assignments: list[ClusterAssignment]) -> None:
    stages = [a.stage for a in assignments]
    if len(set(stages)) != len(stages):
        raise InputError(f"{sample.name}: stage names repeat ({', '.join(stages)}).")
    for assignment in assignments:
        if len(assignment.labels) != len(sample.events) or len(assignment.probability) != len(sample.events):
            raise InputError(
                f"{sample.name}: stage {assignment.stage!r} has {len(assignment.labels)} labels for "
                f"{len(sample.events)} events."
            )


def _carried_keywords(sample: FcsSample) -> dict[str, str]:
    """The source's keywords that still hold for the written file and that FCS can carry."""
    return {
        key: value
        for key, value in sample.keywords.items()
        if not LAYOUT_KEYWORD.match(key) and value.strip() and FCS_DELIMITER not in key
    }


def _concatenate_categoricals(parts: list[pd.Categorical]) -> pd.Categorical:
    categories = list(dict.fromkeys(c for part in parts for c in part.categories))
    values = np.concatenate([np.asarray(part, dtype=object) for part in parts])
    return pd.Categorical(values, categories=categories)
