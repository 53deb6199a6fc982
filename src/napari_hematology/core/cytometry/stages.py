"""Staged deep clustering of FCS batches: fitting and applying a pipeline, its results, saving it.

A pipeline is a list of stages (:mod:`napari_hematology.core.cytometry.stage_config`). The first clusters
every event into coarse populations; a later stage names a ``parent`` stage and one of its populations, and
splits only those events into subtypes (for example IDEC for red cells vs platelets, then VaDE for pure,
reticulated and clumped red cells). A single ``cytometry cluster`` run is a one-stage pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hematology.core.cytometry.batch import (
    Batch,
    decide_batch_preprocessing,
    read_batch,
    read_reference,
    read_samples,
    sample_values,
)
from napari_hematology.core.cytometry.clusterer import Clusterer, load_clusterer
from napari_hematology.core.cytometry.fcs import (
    FcsSample,
    channel_indices,
    usable_channels,
)
from napari_hematology.core.cytometry.fitting import fit_clusterer, pretrain_panel
from napari_hematology.core.cytometry.naming import UNASSIGNED, Naming, load_marker_table, name_clusters
from napari_hematology.core.cytometry.stage_config import (
    CONFIG_FILE,
    PipelineConfig,
    StageConfig,
    check_names,
    pipeline_config_from_dict,
)
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel


@dataclass
class StageResult:
    """What one stage found.

    Attributes:
        stage: Its configuration (with the number of clusters that was chosen, when it was left to the
            data).
        probabilities: Per file, ``(events, clusters)`` soft assignments; NaN rows for events the stage
            did not see (outside its parent population).
        clusterers: The fitted models: one when pooled, else one per file.
        naming: How the populations were named from their marker levels (None when they were named in
            the config, trained on a reference, or ``markers: none``).

    """

    stage: StageConfig
    probabilities: list[np.ndarray]
    clusterers: list[Clusterer]
    naming: Naming | None = None

    @property
    def cluster_count(self) -> dict:
        """How the number of clusters was chosen: ``chosen``, ``rule`` (and ``tried``, ``scores``)."""
        return dict(self.clusterers[0].extra.get("cluster_count") or {"chosen": self.stage.clusters})


@dataclass
class PipelineResult:
    """Result of a pipeline run over a batch of files.

    Attributes:
        config: The run's configuration, with the channels used.
        batch: The files, channels left out, and each file's preprocessing.
        stages: What each stage found.

    """

    config: PipelineConfig
    batch: Batch
    stages: list[StageResult]

    @property
    def samples(self) -> list[FcsSample]:
        """The clustered samples (one per data set)."""
        return self.batch.samples

    def stage(self, name: str) -> StageResult:
        """Return the result of the stage called ``name``."""
        return next(s for s in self.stages if s.stage.name == name)

    def values(self, file_index: int, channels: list[str]) -> np.ndarray:
        """Preprocessed values of ``channels`` of one file, as they were clustered."""
        return sample_values(self.samples[file_index], channels, self.batch.preprocessing[file_index])

    def rename(self, stage_name: str, names: list[str]) -> None:
        """Name the populations of a stage; tables, exports and saved models then use the names.

        Raises:
            InputError: Not one unique, non-empty name per population, or a name that a later stage
                refers to as its parent population is changed.

        """
        index = next(i for i, s in enumerate(self.stages) if s.stage.name == stage_name)
        old = self.stages[index].stage
        names = [str(name).strip() for name in names]
        if len(names) != old.clusters:
            raise InputError(f"Stage {stage_name!r} has {old.clusters} populations; got {len(names)} names.")
        check_names(names, f"Stage {stage_name!r}")
        for child in self.config.stages:
            if child.parent == stage_name and child.parent_population not in names:
                raise InputError(
                    f"Stage {child.name!r} splits {stage_name!r}'s population {child.parent_population!r}; "
                    "keep that name."
                )
        stage = dataclasses.replace(old, populations=names)
        self.stages[index].stage = stage
        for clusterer in self.stages[index].clusterers:
            clusterer.populations = list(names)
        self.config.stages = [stage if s.name == stage_name else s for s in self.config.stages]


def run_pipeline(
    paths: list[str | Path],
    config: PipelineConfig,
    reference: str | Path | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    skip_unreadable: bool = True,
) -> PipelineResult:
    """Train the stages on a batch of FCS files and assign every event.

    Args:
        paths: FCS files.
        config: Stages and preprocessing.
        reference: Optional CSV of per-sample reference fractions (soft labels).
        progress: Progress callback.
        should_stop: Cancellation callback.
        skip_unreadable: Leave out files that cannot be read (listed in ``result.batch.skipped``); the
            run still stops when none can be read.

    Returns:
        Soft assignments of every stage for every file, and the fitted models.

    """
    config.check()
    table = _marker_table(config)
    batch = read_batch(
        paths, config.channels, progress=progress, should_stop=should_stop, skip_unreadable=skip_unreadable
    )
    config, batch = _usable_stage_channels(dataclasses.replace(config, channels=batch.channels), batch)
    batch = decide_batch_preprocessing(batch, config)
    samples = batch.samples
    references = read_reference(reference, samples, config) if reference is not None else {}
    results: list[StageResult] = []
    for number, stage in enumerate(config.stages, start=1):
        check_cancel(should_stop)
        label = f"stage {number}/{len(config.stages)} ({stage.name})"
        masks = _stage_masks(stage, results, samples)
        values = _stage_values(batch, stage.channels or config.channels)
        clusterers = _fit_stage(
            stage, config, values, masks, references.get(stage.name), _prefixed(progress, label), should_stop
        )
        if stage.clusters is None:
            stage = dataclasses.replace(stage, clusters=len(clusterers[0].populations))
            config.stages = [stage if s.name == stage.name else s for s in config.stages]
        probabilities = _assign(clusterers, values, masks, should_stop)
        result = StageResult(stage, probabilities, clusterers)
        if _to_name(stage, config, table, references):
            _name_from_markers(result, batch, config, table)
        results.append(result)
    return PipelineResult(config, batch, results)


def _to_name(stage: StageConfig, config: PipelineConfig, table, references: dict) -> bool:
    """Name from marker levels: pooled runs, stages without names or a reference, that no stage splits."""
    return (
        table is not None
        and config.pooled
        and stage.populations is None
        and stage.name not in references
        and not any(child.parent == stage.name for child in config.stages)
    )


def _marker_table(config: PipelineConfig):
    markers = config.markers
    if markers is None or str(markers).strip().lower() in ("none", "no", "false", ""):
        return None
    return load_marker_table(None if str(markers).strip().lower() == "default" else markers)


def _name_from_markers(result: StageResult, batch: Batch, config: PipelineConfig, table) -> None:
    """Name a stage's populations from their marker levels (pooled over the files)."""
    channels = result.clusterers[0].channels
    values = np.concatenate(_stage_values(batch, channels))
    labels = np.concatenate([hard_labels(p) for p in result.probabilities])
    sample = batch.samples[0]
    shown = [sample.markers[i] or sample.names[i] for i in channel_indices(sample, channels)]
    naming = name_clusters(values, labels, result.stage.clusters, shown, table)
    if all(name.startswith(UNASSIGNED) for name in naming.names):
        return  # no cluster matches a population of the table: numbers say as much as "unassigned (k)"
    result.naming = naming
    result.stage = dataclasses.replace(result.stage, populations=list(naming.names))
    for clusterer in result.clusterers:
        clusterer.populations = list(naming.names)
    config.stages = [result.stage if s.name == result.stage.name else s for s in config.stages]


def _usable_stage_channels(config: PipelineConfig, batch: Batch) -> tuple[PipelineConfig, Batch]:
    """Leave constant channels out of the stages that name their own channels, with a warning."""
    stages, warnings = [], list(batch.warnings)
    for stage in config.stages:
        if stage.channels:
            channels, left_out = usable_channels(batch.samples, stage.channels)
            warnings += [w for w in left_out if w not in warnings]
            stage = dataclasses.replace(stage, channels=channels)
        stages.append(stage)
    return dataclasses.replace(config, stages=stages), dataclasses.replace(batch, warnings=warnings)


def _stage_values(batch: Batch, channels: list[str]) -> list[np.ndarray]:
    return [
        sample_values(sample, channels, preprocessing)
        for sample, preprocessing in zip(batch.samples, batch.preprocessing, strict=True)
    ]


def apply_pipeline(
    paths: list[str | Path],
    model_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> PipelineResult:
    """Assign the events of new files with a pipeline saved by :func:`save_pipeline` (no training).

    Raises:
        InputError: Files lack the model's channels.
        ModelFileError: The folder is not a saved pipeline.

    """
    config, clusterers = load_pipeline(model_dir)
    skipped: list[str] = []
    samples = read_samples(paths, progress, should_stop, skipped)
    channels = list(dict.fromkeys(c for clusterer in clusterers.values() for c in clusterer.channels))
    for sample in samples:
        channel_indices(sample, channels)
    batch = decide_batch_preprocessing(Batch(samples, channels, skipped=skipped), config)
    results: list[StageResult] = []
    for stage in config.stages:
        clusterer = clusterers[stage.name]
        masks = _stage_masks(stage, results, samples)
        values = _stage_values(batch, clusterer.channels)
        results.append(StageResult(stage, _assign([clusterer], values, masks, should_stop), [clusterer]))
    return PipelineResult(config, batch, results)


def _prefixed(progress: ProgressCallback | None, label: str) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{label}: {message}")


def _stage_masks(
    stage: StageConfig, results: list[StageResult], samples: list[FcsSample]
) -> list[np.ndarray]:
    if stage.parent is None:
        return [np.ones(len(s.events), dtype=bool) for s in samples]
    parent = next(r for r in results if r.stage.name == stage.parent)
    column = parent.stage.population_names.index(stage.parent_population)
    return [hard_labels(p) == column for p in parent.probabilities]


def hard_labels(probabilities: np.ndarray) -> np.ndarray:
    """Most likely cluster per event, -1 where the stage did not see the event."""
    seen = np.isfinite(probabilities).all(axis=1)
    labels = np.full(len(probabilities), -1)
    labels[seen] = probabilities[seen].argmax(axis=1)
    return labels


def _fit_stage(stage, config, values, masks, reference, progress, should_stop) -> list[Clusterer]:
    settings = stage.cluster_config(config.seed)
    names = stage.population_names
    channels = stage.channels or config.channels
    pooled = np.concatenate([v[m] for v, m in zip(values, masks, strict=False)])
    if config.pooled:
        ids = np.concatenate([np.full(m.sum(), i) for i, m in enumerate(masks)])
        _require_events(pooled, stage, "the batch")
        clusterer = fit_clusterer(
            pooled,
            channels,
            settings,
            sample_ids=ids,
            reference=reference,
            populations=names,
            progress=progress,
            should_stop=should_stop,
        )
        return [_with_preprocessing(clusterer, config)]
    for i, (v, m) in enumerate(zip(values, masks, strict=False)):
        _require_events(v[m], stage, f"file {i + 1}")
    # the autoencoder is pretrained once on the panel's pooled events; each file then only clusters
    panel = (
        pretrain_panel(pooled, channels, settings, progress=progress, should_stop=should_stop)
        if len(values) > 1
        else None
    )
    fitted = []
    for i, (v, m) in enumerate(zip(values, masks, strict=False)):
        if fitted and settings.clusters is None:
            # one set of populations for every file: the count chosen on the first file
            settings = dataclasses.replace(settings, clusters=len(fitted[0].populations))
            settings = settings if settings.clusters > 1 else dataclasses.replace(settings, clusters=None)
        row = None if reference is None else reference[i : i + 1]
        clusterer = fit_clusterer(
            v[m],
            channels,
            settings,
            sample_ids=np.zeros(m.sum(), dtype=int),
            reference=row,
            populations=names,
            progress=progress,
            should_stop=should_stop,
            pretrained=panel,
        )
        fitted.append(_with_preprocessing(clusterer, config))
    return fitted


def _require_events(values: np.ndarray, stage: StageConfig, where: str) -> None:
    if len(values) == 0:
        raise InputError(
            f"Stage {stage.name!r} received no events from {where} (its parent population "
            f"{stage.parent_population!r} is empty); use fewer clusters in stage {stage.parent!r}."
        )


def _with_preprocessing(clusterer: Clusterer, config: PipelineConfig) -> Clusterer:
    clusterer.extra.update(transform=config.transform, cofactor=config.cofactor, compensate=config.compensate)
    return clusterer


def _assign(clusterers, values, masks, should_stop) -> list[np.ndarray]:
    assigned = []
    for i, (v, m) in enumerate(zip(values, masks, strict=False)):
        clusterer = clusterers[0] if len(clusterers) == 1 else clusterers[i]
        probabilities = np.full((len(v), len(clusterer.populations)), np.nan, dtype=np.float32)
        if m.any():
            probabilities[m] = clusterer.assign(v[m], should_stop=should_stop)
        assigned.append(probabilities)
    return assigned


def save_pipeline(result: PipelineResult, directory: str | Path) -> Path:
    """Save the pooled models of a run (one registry folder per stage) and ``stages.yaml``.

    Raises:
        InputError: The run trained one model per file (``pooled: false``), which cannot be reapplied.

    """
    import yaml

    if not result.config.pooled:
        raise InputError("Only pooled pipelines can be saved; per-file models belong to their own files.")
    directory = Path(directory)
    for stage_result in result.stages:
        stage_result.clusterers[0].save(directory / stage_result.stage.name)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(result.config.to_dict(), sort_keys=False))
    return directory


def load_pipeline(directory: str | Path) -> tuple[PipelineConfig, dict[str, Clusterer]]:
    """Load a pipeline saved by :func:`save_pipeline`.

    Raises:
        ModelFileError: Missing or corrupt folder.

    """
    import yaml

    from napari_hematology.core.errors import ModelFileError

    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"{directory} is not a saved cytometry pipeline (no {CONFIG_FILE}).")
    try:
        config = pipeline_config_from_dict(yaml.safe_load(path.read_text()), path.name)
    except (yaml.YAMLError, TypeError, InputError) as error:
        raise ModelFileError(f"{path}: corrupt pipeline config ({error}).") from error
    return config, {stage.name: load_clusterer(directory / stage.name) for stage in config.stages}


