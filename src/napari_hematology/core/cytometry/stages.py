"""Staged deep clustering of FCS batches: stage configs, soft labels from reference fractions, outputs.

A pipeline is a list of stages. The first clusters every event into coarse populations; a later stage
names a ``parent`` stage and one of its populations, and splits only those events into subtypes (for
example IDEC for red cells vs platelets, then VaDE for pure, reticulated and clumped red cells). A single
``cytometry cluster`` run is a one-stage pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.cytometry.cluster_config import ClusterConfig
from napari_hematology.core.cytometry.clusterer import Clusterer, load_clusterer
from napari_hematology.core.cytometry.fcs import (
    TRANSFORMS,
    FcsSample,
    channel_indices,
    default_channels,
    read_fcs_data_sets,
    usable_channels,
)
from napari_hematology.core.cytometry.fitting import fit_clusterer
from napari_hematology.core.cytometry.scales import Preprocessing, apply_preprocessing, decide_preprocessing
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, tracked

REFERENCE_COLUMNS = ("file", "population", "fraction")
SUM_TOLERANCE = 0.02
CONFIG_FILE = "stages.yaml"
STAGE_KEYS = {"name", "method", "clusters", "populations", "parent", "parent_population", "channels"}
PIPELINE_KEYS = {"stages", "channels", "transform", "cofactor", "compensate", "pooled", "seed"}
SETTING_KEYS = ClusterConfig.setting_names() - {"method", "clusters", "seed"}


@dataclass
class StageConfig:
    """One clustering stage.

    Attributes:
        name: Stage name, used in column names.
        method: ``idec`` or ``vade``.
        clusters: Number of populations.
        populations: Population names (default ``0 .. clusters-1``).
        parent: Name of an earlier stage whose population this stage splits; None clusters all events.
        parent_population: The parent's population to split.
        channels: Channels of this stage; None uses the pipeline's channels.
        settings: Further :class:`ClusterConfig` settings (epochs, latent_dim, ...).

    """

    name: str
    method: str = "idec"
    clusters: int = 2
    populations: list[str] | None = None
    parent: str | None = None
    parent_population: str | None = None
    channels: list[str] | None = None
    settings: dict = field(default_factory=dict)

    @property
    def population_names(self) -> list[str]:
        """Names of this stage's populations."""
        return list(self.populations or [str(k) for k in range(self.clusters)])

    def cluster_config(self, seed: int) -> ClusterConfig:
        """Return the model and training settings of this stage."""
        return ClusterConfig.from_settings(
            method=self.method, clusters=self.clusters, seed=seed, **self.settings
        )


@dataclass
class PipelineConfig:
    """A staged clustering run.

    Attributes:
        stages: The stages, parents before children.
        channels: Channels (``$PnN`` or ``$PnS`` names); None uses the marker channels of the first file.
        transform: ``auto`` (decided per file from what its values already are, see
            :func:`~napari_hematology.core.cytometry.scales.decide_preprocessing`), ``arcsinh``,
            ``logicle`` or ``none``.
        cofactor: Arcsinh cofactor; None picks 5 for mass cytometry and 150 for flow, per file.
        compensate: ``auto`` (decided per file), or True / False to apply each file's spillover matrix
            or not.
        pooled: Train one model on the events of all files (True) or one model per file (False).
        seed: Random seed.

    """

    stages: list[StageConfig]
    channels: list[str] | None = None
    transform: str = "auto"
    cofactor: float | None = None
    compensate: bool | str = "auto"
    pooled: bool = True
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`InputError` if the stages do not fit together."""
        if not self.stages:
            raise InputError("The pipeline has no stages; give at least one under 'stages:'.")
        if self.transform not in ("auto", *TRANSFORMS):
            raise InputError(
                f"Unknown transform {self.transform!r}; choose auto or one of {', '.join(TRANSFORMS)}."
            )
        if self.compensate not in ("auto", True, False):
            raise InputError(f"compensate must be auto, true or false, got {self.compensate!r}.")
        if self.cofactor is not None and self.cofactor <= 0:
            raise InputError(f"The arcsinh cofactor must be positive, got {self.cofactor}.")
        seen: dict[str, StageConfig] = {}
        for stage in self.stages:
            stage.cluster_config(self.seed).check()
            _check_names(stage.populations, f"Stage {stage.name!r}")
            if stage.name in seen:
                raise InputError(f"Two stages are named {stage.name!r}; stage names must be unique.")
            if stage.populations is not None and len(stage.populations) != stage.clusters:
                raise InputError(
                    f"Stage {stage.name!r}: {len(stage.populations)} population names for "
                    f"{stage.clusters} clusters."
                )
            if stage.parent is not None:
                parent = seen.get(stage.parent)
                if parent is None:
                    raise InputError(
                        f"Stage {stage.name!r}: parent {stage.parent!r} is not an earlier stage."
                    )
                if stage.parent_population not in parent.population_names:
                    raise InputError(
                        f"Stage {stage.name!r}: parent_population {stage.parent_population!r} is not one of "
                        f"{stage.parent!r}'s populations ({', '.join(parent.population_names)})."
                    )
            seen[stage.name] = stage

    def to_dict(self) -> dict:
        """Plain-data form, as written to ``stages.yaml``."""
        return dataclasses.asdict(self)

    def all_channels(self) -> list[str]:
        """The pipeline's channels followed by any further channels of its stages, each once."""
        listed = list(self.channels or []) + [c for s in self.stages for c in s.channels or []]
        return list(dict.fromkeys(listed))


def _check_names(names: list[str] | None, where: str) -> None:
    if names is None:
        return
    if any(not str(name).strip() for name in names) or len(set(names)) != len(names):
        raise InputError(f"{where}: population names must be non-empty and unique, got {names}.")


def single_stage_config(
    clusters: int = 5, method: str = "idec", channels: list[str] | None = None, **options
) -> PipelineConfig:
    """Return the configuration of a plain ``cytometry cluster`` run: one stage named ``cluster``."""
    settings = options.pop("settings", {})
    stage = StageConfig(name="cluster", method=method, clusters=clusters, settings=settings)
    return PipelineConfig(stages=[stage], channels=channels, **options)


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read a stages YAML file.

    Example::

        channels: [CD45, CD235ab_CD61, CD61]
        transform: arcsinh
        cofactor: 5
        stages:
          - {name: lineage, method: idec, clusters: 2, populations: [RBC, PLT]}
          - {name: rbc, method: vade, clusters: 3, parent: lineage, parent_population: RBC,
             populations: [pure, reticulocyte, clumped], epochs: 20}

    Raises:
        InputError: Missing or unreadable file, unknown keys, or stages that do not fit together.

    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such stages file.")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{path.name}: not valid YAML ({error}).") from error
    return pipeline_config_from_dict(raw, path.name)


def pipeline_config_from_dict(raw, source: str = "stages config") -> PipelineConfig:
    """Build and check a :class:`PipelineConfig` from plain data (as parsed from YAML)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
        raise InputError(f"{source}: expected a mapping with a 'stages:' list.")
    _refuse_unknown(raw, PIPELINE_KEYS, source)
    stages = []
    for number, item in enumerate(raw["stages"], start=1):
        if not isinstance(item, dict) or "name" not in item:
            raise InputError(f"{source}: stage {number} must be a mapping with a 'name'.")
        _refuse_unknown(item, STAGE_KEYS | SETTING_KEYS | {"settings"}, f"{source}, stage {item['name']!r}")
        settings = {**item.get("settings", {}), **{k: item[k] for k in SETTING_KEYS if k in item}}
        fields = {k: item[k] for k in STAGE_KEYS if k in item}
        stages.append(StageConfig(settings=settings, **fields))
    options = {k: raw[k] for k in PIPELINE_KEYS - {"stages"} if k in raw}
    config = PipelineConfig(stages=stages, **options)
    config.check()
    return config


def _refuse_unknown(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}."
        )


@dataclass
class Batch:
    """FCS files read for clustering, with the channels to use and how each file is preprocessed.

    Attributes:
        samples: One per data set (a file with several data sets gives several samples).
        channels: The chosen (or default) channels, less those constant in every file.
        warnings: Channels left out, and why.
        preprocessing: Per sample, what its values are and what is done to them (empty until
            :func:`decide_batch_preprocessing`).

    """

    samples: list[FcsSample]
    channels: list[str]
    warnings: list[str] = field(default_factory=list)
    preprocessing: list[Preprocessing] = field(default_factory=list)


@dataclass
class StageResult:
    """What one stage found.

    Attributes:
        stage: Its configuration.
        probabilities: Per file, ``(events, clusters)`` soft assignments; NaN rows for events the stage
            did not see (outside its parent population).
        clusterers: The fitted models: one when pooled, else one per file.

    """

    stage: StageConfig
    probabilities: list[np.ndarray]
    clusterers: list[Clusterer]


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
        _check_names(names, f"Stage {stage_name!r}")
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


def read_batch(
    paths: list[str | Path],
    channels: list[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Batch:
    """Read FCS files (every data set of each) and check that they share the chosen channels.

    Args:
        paths: FCS files.
        channels: Channels to require; None requires every file to have the first file's marker panel.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The samples and the channels (the default panel when ``channels`` is None); channels on which
        every event has the same value (a flag, a dead detector) are left out with a warning.

    Raises:
        InputError: Unreadable files, duplicated file names, a file missing a chosen channel (named with
            the file), mixed panels, or only constant channels.

    """
    if not paths:
        raise InputError("No FCS files given.")
    samples = [
        sample
        for path in tracked(paths, len(paths), progress, should_stop, "reading FCS")
        for sample in read_fcs_data_sets(path)
    ]
    stems = [s.stem for s in samples]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise InputError(f"Several files are named {', '.join(duplicated)}; their outputs would collide.")
    if channels:
        for sample in samples:
            channel_indices(sample, channels)
        return Batch(samples, *usable_channels(samples, list(channels)))
    _check_same_panel(samples)
    return Batch(samples, *usable_channels(samples, default_channels(samples[0])))


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


def run_pipeline(
    paths: list[str | Path],
    config: PipelineConfig,
    reference: str | Path | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> PipelineResult:
    """Train the stages on a batch of FCS files and assign every event.

    Args:
        paths: FCS files.
        config: Stages and preprocessing.
        reference: Optional CSV of per-sample reference fractions (soft labels).
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        Soft assignments of every stage for every file, and the fitted models.

    """
    config.check()
    batch = read_batch(paths, config.channels, progress=progress, should_stop=should_stop)
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
        probabilities = _assign(clusterers, values, masks, should_stop)
        results.append(StageResult(stage, probabilities, clusterers))
    return PipelineResult(config, batch, results)


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
    if not paths:
        raise InputError("No FCS files given.")
    samples = [
        sample
        for path in tracked(paths, len(paths), progress, should_stop, "reading FCS")
        for sample in read_fcs_data_sets(path)
    ]
    channels = list(dict.fromkeys(c for clusterer in clusterers.values() for c in clusterer.channels))
    for sample in samples:
        channel_indices(sample, channels)
    batch = decide_batch_preprocessing(Batch(samples, channels), config)
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
    if config.pooled:
        pooled = np.concatenate([v[m] for v, m in zip(values, masks, strict=False)])
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
    fitted = []
    for i, (v, m) in enumerate(zip(values, masks, strict=False)):
        _require_events(v[m], stage, f"file {i + 1}")
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
