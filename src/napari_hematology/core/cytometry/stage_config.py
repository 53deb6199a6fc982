"""Stage configs of a cytometry pipeline: what each stage clusters, read from a stages YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from napari_hematology.core.cytometry.cluster_config import ClusterConfig
from napari_hematology.core.cytometry.fcs import TRANSFORMS
from napari_hematology.core.errors import InputError

CONFIG_FILE = "stages.yaml"
STAGE_KEYS = {"name", "method", "clusters", "populations", "parent", "parent_population", "channels"}
PIPELINE_KEYS = {"stages", "channels", "transform", "cofactor", "compensate", "pooled", "seed", "markers"}
SETTING_KEYS = ClusterConfig.setting_names() - {"method", "clusters", "seed"}


@dataclass
class StageConfig:
    """One clustering stage.

    Attributes:
        name: Stage name, used in column names.
        method: ``idec`` or ``vade``.
        clusters: Number of populations; None (``auto`` in YAML) chooses it from the data, unless
            ``populations`` are named (one cluster each).
        populations: Population names (default ``0 .. clusters-1``).
        parent: Name of an earlier stage whose population this stage splits; None clusters all events.
        parent_population: The parent's population to split.
        channels: Channels of this stage; None uses the pipeline's channels.
        settings: Further :class:`ClusterConfig` settings (epochs, latent_dim, ...).

    """

    name: str
    method: str = "idec"
    clusters: int | None = None
    populations: list[str] | None = None
    parent: str | None = None
    parent_population: str | None = None
    channels: list[str] | None = None
    settings: dict = field(default_factory=dict)

    @property
    def population_names(self) -> list[str]:
        """Names of this stage's populations (empty while their number is still to be chosen)."""
        return list(self.populations or [str(k) for k in range(self.clusters or 0)])

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
        markers: Marker table (YAML) that names the clusters of stages whose populations are not named
            (:mod:`~napari_hematology.core.cytometry.naming`); ``default`` the shipped table of common
            blood panels, ``none`` keeps numbers.

    """

    stages: list[StageConfig]
    channels: list[str] | None = None
    transform: str = "auto"
    cofactor: float | None = None
    compensate: bool | str = "auto"
    pooled: bool = True
    seed: int = 0
    markers: str | None = "default"

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
            check_names(stage.populations, f"Stage {stage.name!r}")
            if stage.name in seen:
                raise InputError(f"Two stages are named {stage.name!r}; stage names must be unique.")
            if stage.clusters is None and stage.populations is not None:
                stage.clusters = len(stage.populations)
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
                if parent.clusters is None:
                    raise InputError(
                        f"Stage {stage.name!r} splits a population of {parent.name!r}, whose number of "
                        f"clusters is left to the data; give {parent.name!r} its clusters or populations."
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


def check_names(names: list[str] | None, where: str) -> None:
    """Refuse population names that are empty or repeated (None: unnamed, fine)."""
    if names is None:
        return
    if any(not str(name).strip() for name in names) or len(set(names)) != len(names):
        raise InputError(f"{where}: population names must be non-empty and unique, got {names}.")


def single_stage_config(
    clusters: int | None = None, method: str = "idec", channels: list[str] | None = None, **options
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
        if str(fields.get("clusters", "")).strip().lower() == "auto":
            fields["clusters"] = None
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
