"""Per-event and per-sample tables of a pipeline run, their CSV files, and 2-D views for plotting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_hematology.core.cytometry.stages import PipelineResult, StageResult, hard_labels, sample_values
from napari_hematology.core.io import write_table
from napari_hematology.core.projection import principal_components

PROPORTIONS_FILE = "proportions.csv"
CELLS_SUFFIX = "_clusters.csv"


def _single_stage(result: PipelineResult) -> bool:
    return len(result.stages) == 1


def _prob_column(result: PipelineResult, stage: StageResult, population: str) -> str:
    return f"prob_{population}" if _single_stage(result) else f"prob_{stage.stage.name}_{population}"


def cell_table(result: PipelineResult, file_index: int):
    """One row per event of one file.

    A one-stage run gives ``event, cluster, prob_<k>...``; a staged run gives ``event, population`` (the
    most specific population found) then, per stage, ``<stage>`` (its population, empty where the stage
    did not see the event) and ``prob_<stage>_<population>...``.

    Returns:
        A pandas DataFrame.

    """
    import pandas as pd

    events = len(result.samples[file_index].events)
    columns: dict[str, np.ndarray] = {"event": np.arange(events)}
    if _single_stage(result):
        probabilities = result.stages[0].probabilities[file_index]
        columns["cluster"] = hard_labels(probabilities)
    else:
        columns["population"] = final_populations(result, file_index)
    for stage in result.stages:
        probabilities = stage.probabilities[file_index]
        if not _single_stage(result):
            names = np.asarray(stage.stage.population_names + [""], dtype=object)
            columns[stage.stage.name] = names[hard_labels(probabilities)]
        for k, population in enumerate(stage.stage.population_names):
            columns[_prob_column(result, stage, population)] = np.round(probabilities[:, k], 4)
    return pd.DataFrame(columns)


def final_populations(result: PipelineResult, file_index: int) -> np.ndarray:
    """Return the most specific population name of every event (later stages refine earlier ones)."""
    events = len(result.samples[file_index].events)
    names = np.full(events, "", dtype=object)
    for stage in result.stages:
        labels = hard_labels(stage.probabilities[file_index])
        seen = labels >= 0
        names[seen] = np.asarray(stage.stage.population_names, dtype=object)[labels[seen]]
    return names


def sample_proportions(probabilities: np.ndarray) -> np.ndarray:
    """Fraction of a sample's events assigned (most likely cluster) to each population.

    Counts of the cell-level assignments, not the mean soft assignment: the proportions then agree with
    the ``cluster`` column of the per-event table, and they are not biased towards uniform by the soft
    assignment's spread (the mean of soft labels that are 99 % right can be several points off). Events
    the stage did not see (NaN rows) are left out; a sample without events gets zeros.
    """
    labels = hard_labels(probabilities)
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=probabilities.shape[1]).astype(np.float64)
    return counts / max(len(labels), 1)


def proportions_table(result: PipelineResult):
    """One row per file: ``file, events`` and the fraction of events assigned to each population.

    Fractions are within their stage (for a child stage, fractions of the parent population's events),
    from :func:`sample_proportions`.

    Returns:
        A pandas DataFrame.

    """
    import pandas as pd

    rows = []
    for i, sample in enumerate(result.samples):
        row: dict[str, object] = {"file": sample.name, "events": len(sample.events)}
        for stage in result.stages:
            fractions = sample_proportions(stage.probabilities[i])
            for k, population in enumerate(stage.stage.population_names):
                row[_prob_column(result, stage, population).replace("prob_", "prop_", 1)] = round(
                    float(fractions[k]), 5
                )
        rows.append(row)
    return pd.DataFrame(rows)


def write_outputs(result: PipelineResult, directory: str | Path) -> list[Path]:
    """Write ``<stem>_clusters.csv`` per file and ``proportions.csv`` into ``directory``.

    Returns:
        The written paths, proportions last.

    """
    directory = Path(directory)
    written = [
        write_table(directory / f"{sample.stem}{CELLS_SUFFIX}", cell_table(result, i))
        for i, sample in enumerate(result.samples)
    ]
    written.append(write_table(directory / PROPORTIONS_FILE, proportions_table(result)))
    return written


def scatter_coordinates(
    result: PipelineResult, file_index: int, stage_index: int = 0, channels: tuple[str, str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """2-D coordinates of every event seen by a stage: two channels, or the latent space.

    Args:
        result: A pipeline run.
        file_index: Which file.
        stage_index: Which stage (its events and, for the latent view, its model).
        channels: Two channel names (transformed values), or None for the first two principal axes of
            the stage model's latent space.

    Returns:
        ``(events, 2)`` coordinates (NaN for events the stage did not see) and the two axis names.

    """
    stage = result.stages[stage_index]
    sample = result.samples[file_index]
    seen = np.isfinite(stage.probabilities[file_index]).all(axis=1)
    coordinates = np.full((len(sample.events), 2), np.nan)
    if channels is not None:
        coordinates[seen] = sample_values(sample, list(channels), result.config)[seen]
        return coordinates, list(channels)
    clusterer = stage.clusterers[0] if len(stage.clusterers) == 1 else stage.clusterers[file_index]
    values = sample_values(sample, clusterer.channels, result.config)[seen]
    if len(values):
        coordinates[seen] = principal_components(clusterer.embed(values))
    return coordinates, ["latent 1", "latent 2"]
