"""Per-event and per-sample tables of a pipeline run, their files, and 2-D views for plotting.

Beside the per-event and per-sample CSV tables a run writes ``preprocessing.json`` (what each file's
values were found to be and what was done to them; its summary is also the ``preprocessing`` column of
``proportions.csv``) and ``markers.csv`` (median of each channel per population, to help name them);
on request, FCS files with the clusters as new parameters and one AnnData ``.h5ad`` file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from napari_hematology.core.cytometry.export import (
    ClusterAssignment,
    marker_summary,
    write_fcs_with_clusters,
    write_h5ad,
)
from napari_hematology.core.cytometry.fcs import FcsSample, channel_indices
from napari_hematology.core.cytometry.stages import PipelineResult, StageResult, hard_labels
from napari_hematology.core.io import write_table
from napari_hematology.core.projection import principal_components

PROPORTIONS_FILE = "proportions.csv"
PREPROCESSING_FILE = "preprocessing.json"
POPULATIONS_FILE = "populations.json"
MARKERS_FILE = "markers.csv"
CELLS_SUFFIX = "_clusters.csv"
FCS_SUFFIX = "_clusters.fcs"


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
        columns["cluster"] = _stage_names(result.stages[0], file_index)
    else:
        columns["population"] = final_populations(result, file_index)
    for stage in result.stages:
        probabilities = stage.probabilities[file_index]
        if not _single_stage(result):
            columns[stage.stage.name] = _stage_names(stage, file_index)
        for k, population in enumerate(stage.stage.population_names):
            columns[_prob_column(result, stage, population)] = np.round(probabilities[:, k], 4)
    return pd.DataFrame(columns)


def _stage_names(stage: StageResult, file_index: int) -> np.ndarray:
    """Population name of every event in one stage; empty where the stage did not see the event."""
    names = np.asarray(stage.stage.population_names + [""], dtype=object)
    return names[hard_labels(stage.probabilities[file_index])]


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
        row["preprocessing"] = result.batch.preprocessing[i].summary()
        rows.append(row)
    return pd.DataFrame(rows)


def preprocessing_record(result: PipelineResult) -> dict:
    """What was decided for each file and why, and the channels left out (``preprocessing.json``)."""
    files = []
    for sample, decision in zip(result.samples, result.batch.preprocessing, strict=True):
        record = dataclasses.asdict(decision)
        files.append({"file": sample.name, "summary": decision.summary(), **record, "reading": sample.notes})
    return {
        "channels": result.config.all_channels(),
        "channels_left_out": result.batch.warnings,
        "files_skipped": result.batch.skipped,
        "files": files,
    }


def populations_record(result: PipelineResult) -> dict:
    """Per stage: the number of clusters, how it was chosen, each population's name and why.

    Written as ``populations.json``.
    """
    stages = []
    for stage in result.stages:
        labels = np.concatenate([hard_labels(p) for p in stage.probabilities])
        counts = np.bincount(labels[labels >= 0], minlength=stage.stage.clusters).tolist()
        entry = {
            "stage": stage.stage.name,
            "clusters": stage.stage.clusters,
            "cluster_count": stage.cluster_count,
        }
        if stage.naming is not None:
            entry["named_by"] = "marker table"
            entry.update(stage.naming.record(counts))
        else:
            entry["named_by"] = "config or reference" if stage.stage.populations else "numbers (not named)"
            entry["populations"] = [
                {"cluster": k, "name": name, "events": int(count)}
                for k, (name, count) in enumerate(zip(stage.stage.population_names, counts, strict=True))
            ]
        stages.append(entry)
    return {"stages": stages}


def populations_summary(result: PipelineResult) -> list[str]:
    """One line per stage: the count (and how it was chosen) and the populations by name."""
    lines = []
    for stage in result.stages:
        count = stage.cluster_count
        how = count.get("rule", "given")
        count = f"{stage.stage.clusters} cluster{'' if stage.stage.clusters == 1 else 's'}"
        chosen = f"{count} ({'given' if how == 'given' else 'chosen from the data: ' + how})"
        lines.append(f"{stage.stage.name}: {chosen}; populations: {', '.join(stage.stage.population_names)}")
    return lines


def marker_table(result: PipelineResult):
    """Median of each channel per population of every stage, on the clustered (transformed) scale.

    Populations of a pooled run are summarised over all files; those of per-file models (``pooled:
    false``), which need not match between files, per file. Channels are labelled by marker where the
    file names one. See :func:`~napari_hematology.core.cytometry.export.marker_summary`.

    Returns:
        A pandas DataFrame: ``stage``, ``file`` (``all`` when pooled), ``population``, ``events``,
        ``fraction``, one column per channel, ``high`` and ``low``.

    """
    import pandas as pd

    groups = [list(range(len(result.samples)))]
    if not result.config.pooled:
        groups = [[i] for i in range(len(result.samples))]
    tables = []
    for stage in result.stages:
        channels = stage.clusterers[0].channels
        labels_of = [_marker_label(result.samples[0], c) for c in channels]
        for files in groups:
            values = np.concatenate([result.values(i, channels) for i in files])
            labels = np.concatenate([hard_labels(stage.probabilities[i]) for i in files])
            if not (labels >= 0).any():
                continue
            table = marker_summary(values, labels, labels_of, stage.stage.population_names)
            table = table.rename_axis("population").reset_index()
            table.insert(0, "file", "all" if result.config.pooled else result.samples[files[0]].name)
            table.insert(0, "stage", stage.stage.name)
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _marker_label(sample: FcsSample, channel: str) -> str:
    index = channel_indices(sample, [channel])[0]
    return sample.markers[index] or sample.names[index]


def cluster_assignments(result: PipelineResult, file_index: int) -> list[ClusterAssignment]:
    """Each stage's population and its probability for every event of one file (for the exports)."""
    assignments = []
    for stage in result.stages:
        probabilities = stage.probabilities[file_index]
        labels = hard_labels(probabilities)
        seen = labels >= 0
        probability = np.full(len(labels), np.nan)
        probability[seen] = probabilities[seen, labels[seen]]
        names = list(stage.stage.populations) if stage.stage.populations else None
        assignments.append(ClusterAssignment(labels, probability, names, stage.stage.name))
    return assignments


def _all_assignments(result: PipelineResult) -> list[list[ClusterAssignment]]:
    return [cluster_assignments(result, i) for i in range(len(result.samples))]


def write_outputs(result: PipelineResult, directory: str | Path) -> list[Path]:
    """Write the per-file cluster tables and the batch's markers, preprocessing, populations, proportions.

    ``<stem>_clusters.csv`` per file, ``markers.csv``, ``preprocessing.json``, ``populations.json`` (the
    number of clusters, how it was chosen, and how each population was named) and ``proportions.csv``.

    Returns:
        The written paths, proportions last.

    """
    directory = Path(directory)
    written = [
        write_table(directory / f"{sample.stem}{CELLS_SUFFIX}", cell_table(result, i))
        for i, sample in enumerate(result.samples)
    ]
    written.append(write_table(directory / MARKERS_FILE, marker_table(result)))
    record = directory / PREPROCESSING_FILE
    record.write_text(json.dumps(preprocessing_record(result), indent=2))
    written.append(record)
    populations = directory / POPULATIONS_FILE
    populations.write_text(json.dumps(populations_record(result), indent=2))
    written.append(populations)
    written.append(write_table(directory / PROPORTIONS_FILE, proportions_table(result)))
    return written


def write_fcs_outputs(result: PipelineResult, directory: str | Path) -> list[Path]:
    """Write every file again as ``<stem>_clusters.fcs`` with each stage's population and probability.

    Population names travel in the keyword ``<STAGE>_NAMES``
    (:func:`~napari_hematology.core.cytometry.export.write_fcs_with_clusters`).

    Returns:
        The written paths.

    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        write_fcs_with_clusters(sample, directory / f"{sample.stem}{FCS_SUFFIX}", assignments)
        for sample, assignments in zip(result.samples, _all_assignments(result), strict=True)
    ]


def write_anndata(result: PipelineResult, path: str | Path) -> Path:
    """Write the run as one ``.h5ad`` file: events x clustered channels, populations in ``obs``.

    ``X`` holds the values as read, the layer ``preprocessed`` the clustered values; ``obs`` has
    ``sample``, ``<stage>`` (population names) and ``<stage>_probability``.

    Returns:
        ``path``.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = result.config.all_channels()
    return write_h5ad(
        path,
        result.samples,
        _all_assignments(result),
        channels,
        [result.values(i, channels) for i in range(len(result.samples))],
    )


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
        coordinates[seen] = result.values(file_index, list(channels))[seen]
        return coordinates, list(channels)
    clusterer = stage.clusterers[0] if len(stage.clusterers) == 1 else stage.clusterers[file_index]
    values = result.values(file_index, clusterer.channels)[seen]
    if len(values):
        coordinates[seen] = principal_components(clusterer.embed(values))
    return coordinates, ["latent PC 1", "latent PC 2"]
