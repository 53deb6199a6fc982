"""Names for clusters from their marker levels, by a user-editable marker table (YAML).

A marker table lists markers with the names panels give them (``CD56`` or ``NK1.1`` for NK cells) and
populations with the level of each marker (``CD4 T: {CD3: "+", CD4: "+", CD8: "-"}``). A channel's
threshold lies in the widest gap between the clusters' medians (on the clustered scale), when that gap is
at least a quarter of the channel's range; a cluster's level of a marker is ``+`` when its median is above
the threshold. A cluster takes the population whose ``+`` markers the
panel has and whose levels all match, the most specific one when several do; otherwise it is
``unassigned``. The shipped table (``blood_markers.yaml``) covers common blood panels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError

DEFAULT_TABLE = Path(__file__).with_name("blood_markers.yaml")
UNASSIGNED = "unassigned"
LEVELS = ("+", "-")
MIN_GAP = 0.25


@dataclass
class MarkerTable:
    """Markers (with the names panels give them) and populations (with their marker levels).

    Attributes:
        markers: Marker -> the names it goes by, in order of preference.
        populations: Population name -> {marker: ``+`` or ``-``}, in the table's order.
        source: Where the table was read from.

    """

    markers: dict[str, list[str]]
    populations: dict[str, dict[str, str]]
    source: str = ""


@dataclass
class Naming:
    """How a stage's clusters were named.

    Attributes:
        names: Per cluster, its (unique) name.
        levels: Per cluster, the level of every marker found in the panel.
        rules: Per cluster, the matched population's rule (``CD3+ CD4+ CD8-``) or why none matched.
        channels: Marker -> the channel label it was read from.
        thresholds: Marker -> the threshold (clustered scale).
        table: The marker table's source.

    """

    names: list[str]
    levels: list[dict[str, str]] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    table: str = ""

    def record(self, counts: list[int] | None = None) -> dict:
        """Plain data for ``populations.json``."""
        populations = [
            {"cluster": k, "name": name, "rule": rule, "levels": levels}
            for k, (name, rule, levels) in enumerate(zip(self.names, self.rules, self.levels, strict=True))
        ]
        if counts is not None:
            for population, count in zip(populations, counts, strict=True):
                population["events"] = int(count)
        return {
            "marker_table": self.table,
            "channels": self.channels,
            "thresholds": {k: round(v, 4) for k, v in self.thresholds.items()},
            "populations": populations,
        }


def load_marker_table(path: str | Path | None = None) -> MarkerTable:
    """Read a marker table (the shipped one when ``path`` is None).

    Raises:
        InputError: Missing or unreadable file, or a table that is not ``markers:`` and ``populations:``
            mappings with ``+`` / ``-`` levels of known markers (one line naming the problem).

    """
    import yaml

    path = Path(path) if path is not None else DEFAULT_TABLE
    if not path.is_file():
        raise InputError(f"{path}: no such marker table.")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{path.name}: not valid YAML ({str(error).splitlines()[0]}).") from error
    return marker_table_from_dict(raw, path.name if path != DEFAULT_TABLE else f"{path.name} (shipped)")


def marker_table_from_dict(raw, source: str = "marker table") -> MarkerTable:
    """Build and check a :class:`MarkerTable` from plain data (as parsed from YAML)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("markers"), dict) or not isinstance(
        raw.get("populations"), dict
    ):
        raise InputError(f"{source}: expected 'markers:' and 'populations:' mappings.")
    markers = {}
    for marker, names in raw["markers"].items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names:
            raise InputError(f"{source}: marker {marker!r} needs a list of the names panels give it.")
        markers[str(marker)] = [str(name) for name in names]
    populations = {}
    for population, rule in raw["populations"].items():
        if not isinstance(rule, dict) or not rule:
            raise InputError(f"{source}: population {population!r} needs marker levels, e.g. {{CD3: '+'}}.")
        levels = {str(marker): str(level).strip() for marker, level in rule.items()}
        unknown = [marker for marker in levels if marker not in markers]
        if unknown:
            raise InputError(
                f"{source}: population {population!r} uses marker(s) {', '.join(unknown)} that are not "
                "listed under 'markers:'."
            )
        bad = [f"{marker}: {level}" for marker, level in levels.items() if level not in LEVELS]
        if bad:
            raise InputError(
                f"{source}: population {population!r} has level(s) {', '.join(bad)}; use + or -."
            )
        if "+" not in levels.values():
            raise InputError(f"{source}: population {population!r} needs at least one '+' marker.")
        populations[str(population)] = levels
    if UNASSIGNED in populations:
        raise InputError(f"{source}: {UNASSIGNED!r} is kept for clusters that match no population.")
    return MarkerTable(markers, populations, source)


def _normal(text: str) -> str:
    return re.sub(r"[\W_]+", "", str(text).casefold())


def _parts(label: str) -> set[str]:
    """The label and each of its parts, normalised (``145Nd_CD4`` -> {145ndcd4, 145nd, cd4})."""
    parts = {_normal(label)} | {_normal(part) for part in re.split(r"[\s\-_/:;,()\[\]]+", str(label))}
    return {part for part in parts if part}


def marker_channels(table: MarkerTable, labels: list[str]) -> dict[str, int]:
    """Marker -> the channel (column index into ``labels``) that carries it; markers not found left out.

    For each marker, its names are tried in order; the first that a channel label contains is used.
    """
    parts = [_parts(label) for label in labels]
    found = {}
    for marker, names in table.markers.items():
        for name in names:
            hits = [i for i, label_parts in enumerate(parts) if _normal(name) in label_parts]
            if hits:
                found[marker] = hits[0]
                break
    return found


def gap_threshold(cluster_medians: np.ndarray, values: np.ndarray) -> float | None:
    """The middle of the widest gap between the clusters' medians of a channel, or None.

    None when no gap is wide enough (at least ``MIN_GAP`` of the channel's 1st-99th percentile range) to
    tell ``+`` from ``-``. Clusters, not events, are split: a rare positive population (3 % NK cells)
    then gets its own level, where a split of the events (Otsu) would cut through the large negative mode.
    """
    medians = np.sort(cluster_medians[np.isfinite(cluster_medians)])
    if len(medians) < 2:
        return None
    low, high = np.percentile(values, [1, 99])
    gaps = np.diff(medians)
    widest = int(np.argmax(gaps))
    if high <= low or gaps[widest] < MIN_GAP * (high - low):
        return None
    return float((medians[widest] + medians[widest + 1]) / 2)


def name_clusters(
    values: np.ndarray, labels: np.ndarray, clusters: int, channel_labels: list[str], table: MarkerTable
) -> Naming:
    """Name each cluster from its marker levels.

    Args:
        values: Clustered (preprocessed) values, ``(events, channels)``.
        labels: Cluster of every event (-1: not clustered, ignored).
        clusters: Number of clusters.
        channel_labels: Per channel, its marker label (``$PnS``) or detector name.
        table: The marker table.

    Returns:
        Unique names (repeats become ``name (2)``, ...), each cluster's levels and the rule it matched.

    """
    found = marker_channels(table, channel_labels)
    seen = labels >= 0
    values, labels = values[seen], labels[seen]
    present = [k for k in range(clusters) if np.any(labels == k)]
    medians = np.full((clusters, values.shape[1]), np.nan)
    for k in present:
        medians[k] = np.median(values[labels == k], axis=0)
    thresholds = {}
    for marker, column in found.items():
        threshold = gap_threshold(medians[present, column], values[:, column])
        if threshold is not None:
            thresholds[marker] = threshold
    found = {m: c for m, c in found.items() if m in thresholds}
    names, levels, rules = [], [], []
    for k in range(clusters):
        if k not in present:
            levels.append({})
            names.append(UNASSIGNED)
            rules.append("no events")
            continue
        level = {m: "+" if medians[k, c] > thresholds[m] else "-" for m, c in found.items()}
        levels.append(level)
        name, rule = _best_population(level, table)
        names.append(name)
        rules.append(rule)
    return Naming(
        _unique(names), levels, rules, {m: channel_labels[c] for m, c in found.items()},
        {m: float(t) for m, t in thresholds.items()}, table.source,
    )


def _best_population(level: dict[str, str], table: MarkerTable) -> tuple[str, str]:
    best, best_checked = None, 0
    for population, rule in table.populations.items():
        if any(marker not in level for marker, wanted in rule.items() if wanted == "+"):
            continue
        checked = [marker for marker in rule if marker in level]
        if all(level[marker] == rule[marker] for marker in checked) and len(checked) > best_checked:
            best, best_checked = population, len(checked)
    if best is None:
        shown = " ".join(f"{m}{v}" for m, v in level.items()) or "no marker of the table in the panel"
        return UNASSIGNED, f"no population of the table matches {shown}"
    rule = table.populations[best]
    return best, " ".join(f"{m}{rule[m]}" for m in rule if m in level)


def _unique(names: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        unique.append(name if counts[name] == 1 else f"{name} ({counts[name]})")
    return unique
