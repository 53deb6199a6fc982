"""A batch of FCS samples read for a pipeline: one panel, per-file preprocessing, reference fractions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.cytometry.fcs import (
    FcsSample,
    channel_indices,
    default_channels,
    read_fcs_data_sets,
    usable_channels,
)
from napari_hematology.core.cytometry.scales import Preprocessing, apply_preprocessing, decide_preprocessing
from napari_hematology.core.cytometry.stage_config import PipelineConfig
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

REFERENCE_COLUMNS = ("file", "population", "fraction")
SUM_TOLERANCE = 0.02


@dataclass
class Batch:
    """FCS files read for clustering, with the channels to use and how each file is preprocessed.

    Attributes:
        samples: One per data set (a file with several data sets gives several samples).
        channels: The chosen (or default) channels, less those constant in every file.
        warnings: Channels left out, and why.
        preprocessing: Per sample, what its values are and what is done to them (empty until
            :func:`decide_batch_preprocessing`).
        skipped: Files that could not be read and were left out (one line each, naming the problem).

    """

    samples: list[FcsSample]
    channels: list[str]
    warnings: list[str] = field(default_factory=list)
    preprocessing: list[Preprocessing] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_batch(
    paths: list[str | Path],
    channels: list[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    skip_unreadable: bool = False,
) -> Batch:
    """Read FCS files (every data set of each) and check that they share the chosen channels.

    Args:
        paths: FCS files.
        channels: Channels to require; None requires every file to have the first file's marker panel.
        progress: Progress callback.
        should_stop: Cancellation callback.
        skip_unreadable: Leave out files that cannot be read (each listed in ``skipped``) instead of
            stopping; the batch still stops when no file can be read.

    Returns:
        The samples and the channels (the default panel when ``channels`` is None); channels on which
        every event has the same value (a flag, a dead detector) are left out with a warning.

    Raises:
        InputError: Unreadable files, duplicated file names, a file missing a chosen channel (named with
            the file), mixed panels, or only constant channels.

    """
    skipped: list[str] = []
    samples = read_samples(paths, progress, should_stop, skipped if skip_unreadable else None)
    stems = [s.stem for s in samples]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise InputError(f"Several files are named {', '.join(duplicated)}; their outputs would collide.")
    if channels:
        for sample in samples:
            channel_indices(sample, channels)
        return Batch(samples, *usable_channels(samples, list(channels)), skipped=skipped)
    _check_same_panel(samples)
    return Batch(samples, *usable_channels(samples, default_channels(samples[0])), skipped=skipped)


def read_samples(
    paths, progress: ProgressCallback | None, should_stop: StopCallback | None,
    skipped: list[str] | None = None,
) -> list[FcsSample]:
    """Every data set of every file, in order.

    With a ``skipped`` list, files that cannot be read are left out and their one-line errors appended
    to it; the first error is raised when no file can be read.
    """
    if not paths:
        raise InputError("No FCS files given.")
    samples, errors = [], []
    for path in tracked(paths, len(paths), progress, should_stop, "reading FCS"):
        try:
            samples += read_fcs_data_sets(path)
        except InputError as error:
            if skipped is None:
                raise
            errors.append(error)
    if not samples:
        raise errors[0]
    if skipped is not None:
        skipped += [f"{error} Skipped." for error in errors]
    return samples


def _check_same_panel(samples: list[FcsSample]) -> None:
    panel = _panel(samples[0])
    for sample in samples[1:]:
        if _panel(sample) != panel:
            missing = [c for c in panel if c not in _panel(sample)]
            extra = [c for c in _panel(sample) if c not in panel]
            raise InputError(
                f"{sample.name} has a different panel from {samples[0].name} (missing: "
                f"{', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}). Choose only the "
                "channels shared by all files, or run the panels separately."
            )


def _panel(sample: FcsSample) -> list[str]:
    """Return the default channels as ``marker (detector)`` names, so that relabelled detectors differ."""
    channels = default_channels(sample)
    return [d for d, n in zip(sample.display_names(), sample.names, strict=False) if n in channels]


def decide_batch_preprocessing(batch: Batch, config: PipelineConfig) -> Batch:
    """Decide, per file, compensation and transform of every channel the pipeline uses.

    ``config.transform``, ``config.compensate`` and ``config.cofactor`` override the decision where they
    are not ``auto`` / None (with a warning where the values suggest otherwise).

    Returns:
        The batch with ``preprocessing`` filled in.

    """
    channels = list(dict.fromkeys(batch.channels + config.all_channels()))
    preprocessing = [
        decide_preprocessing(sample, channels, config.transform, config.compensate, config.cofactor)
        for sample in batch.samples
    ]
    return dataclasses.replace(batch, preprocessing=preprocessing)


def sample_values(sample: FcsSample, channels: list[str], preprocessing: Preprocessing) -> np.ndarray:
    """Compensated, transformed values of ``channels`` for one file, as decided for it.

    Raises:
        InputError: A channel is missing, or holds NaN or infinite values.

    """
    values = apply_preprocessing(sample, channels, preprocessing)
    shown = sample.display_names()
    columns = channel_indices(sample, channels)
    bad = [shown[c] for c, ok in zip(columns, np.isfinite(values).all(axis=0), strict=False) if not ok]
    if bad:
        raise InputError(
            f"{sample.name}: channel(s) {', '.join(bad)} hold NaN or infinite values; leave them out of the "
            "chosen channels or export the file again."
        )
    return values


def read_reference(
    path: str | Path, samples: list[FcsSample], config: PipelineConfig
) -> dict[str, np.ndarray]:
    """Read per-sample reference fractions (CSV with columns file, population, fraction).

    Fractions are within a stage: for a child stage they are fractions of the parent population. Files
    without rows get no proportion loss.

    Args:
        path: The CSV file.
        samples: The batch, to match file names (with or without ``.fcs``).
        config: The pipeline, to match population names to stages.

    Returns:
        Per stage name with reference rows, an array ``(files, clusters)`` (NaN rows for unknown files).

    Raises:
        InputError: Missing columns, unknown files or populations, fractions outside 0..1, or a file whose
            fractions within a stage do not sum to 1.

    """
    from napari_hematology.core.io import read_table

    table = read_table(path, REFERENCE_COLUMNS)
    name = Path(path).name
    fractions = np.asarray(table["fraction"], dtype=np.float64) if _numeric(table["fraction"]) else None
    if (
        fractions is None
        or not np.isfinite(fractions).all()
        or (fractions < 0).any()
        or (fractions > 1).any()
    ):
        raise InputError(f"{name}: column 'fraction' must hold numbers between 0 and 1 (e.g. 0.12 for 12 %).")
    owner = {p: s for s in config.stages for p in s.population_names}
    index = {key: i for i, s in enumerate(samples) for key in (s.name, s.stem)}
    arrays = {}
    for row in table.itertuples(index=False):
        file, population = str(row.file), str(row.population)
        if file not in index:
            raise InputError(f"{name}: file {file!r} is not in this batch ({', '.join(index)}).")
        if population not in owner:
            raise InputError(
                f"{name}: population {population!r} is not named in any stage ({', '.join(owner)})."
            )
        stage = owner[population]
        array = arrays.setdefault(stage.name, np.full((len(samples), stage.clusters), np.nan))
        array[index[file], stage.population_names.index(population)] = float(row.fraction)
    for stage_name, array in arrays.items():
        _check_reference_rows(array, samples, config, stage_name, name)
    return arrays


def _numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column)


def _check_reference_rows(array, samples, config, stage_name, table_name) -> None:
    stage = next(s for s in config.stages if s.name == stage_name)
    for i, row in enumerate(array):
        given = np.isfinite(row)
        if not given.any():
            continue
        if not given.all():
            missing = [p for p, ok in zip(stage.population_names, given, strict=False) if not ok]
            raise InputError(
                f"{table_name}: {samples[i].name} lacks fraction(s) for {', '.join(missing)} of stage "
                f"{stage_name!r}; give every population of the stage (0 where absent)."
            )
        if abs(row.sum() - 1.0) > SUM_TOLERANCE:
            raise InputError(
                f"{table_name}: the fractions of {samples[i].name} in stage {stage_name!r} sum to "
                f"{row.sum():.3f}, not 1; fix the reference values (fractions, not percentages)."
            )
