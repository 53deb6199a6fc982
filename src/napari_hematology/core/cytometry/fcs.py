"""Reading FCS 2.0/3.0/3.1 files, picking channels by name, compensation and signal transforms."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.io import list_files

FCS_SUFFIXES = (".fcs",)
TRANSFORMS = ("arcsinh", "logicle", "none")
SPILL_KEYWORDS = ("spill", "spillover", "$spillover", "$spill", "comp")
NON_SIGNAL_CHANNELS = ("time", "event_length")


@dataclass
class FcsSample:
    """One FCS file in memory.

    Attributes:
        path: Where it was read from.
        events: Raw event values, shape ``(events, channels)``, float64.
        names: ``$PnN`` channel names (detector names).
        markers: ``$PnS`` labels (stain or marker names; empty strings where absent).
        spill: The spillover matrix carried by the file, with the channel names it applies to, or None.
        notes: Conversions made on the way that the user should know about.

    """

    path: Path
    events: np.ndarray
    names: list[str]
    markers: list[str]
    spill: tuple[list[str], np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name

    @property
    def stem(self) -> str:
        """The file name without its suffix."""
        return self.path.stem

    def display_names(self) -> list[str]:
        """``marker (detector)`` where a marker is known, else the detector name."""
        return [f"{m} ({n})" if m and m != n else n for n, m in zip(self.names, self.markers, strict=False)]


def list_fcs(paths: list[str | Path] | str | Path) -> list[Path]:
    """Expand FCS files and folders (searched recursively) into a sorted list of FCS files.

    Raises:
        InputError: A path does not exist, or no FCS file was found.

    """
    return list_files(paths, FCS_SUFFIXES, "FCS files")


def read_fcs(path: str | Path) -> FcsSample:
    """Read an FCS 2.0, 3.0 or 3.1 file with flowio.

    Args:
        path: The ``.fcs`` file.

    Returns:
        The events with channel names, marker labels and spillover matrix (if the file has one).

    Raises:
        InputError: Missing, corrupt or truncated file, or a file without events.

    """
    import flowio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        data = flowio.FlowData(str(path))
        events = np.asarray(data.as_array(preprocess=False), dtype=np.float64)
    except Exception as error:  # flowio raises many exception types for broken files
        raise InputError(
            f"{path.name}: cannot be read as FCS ({type(error).__name__}: {error}). The file is corrupt, "
            "truncated or not an FCS file; export it again from the cytometer software."
        ) from error
    if events.ndim != 2 or events.shape[0] == 0:
        raise InputError(f"{path.name}: the file holds no events.")
    names = [str(n).strip() for n in data.pnn_labels]
    markers = [str(m or "").strip() for m in data.pns_labels]
    sample = FcsSample(path=path, events=events, names=names, markers=markers)
    sample.spill = _parse_spill(data.text, names, path.name)
    return sample


def _parse_spill(text: dict, names: list[str], file_name: str) -> tuple[list[str], np.ndarray] | None:
    raw = next((text[key] for key in SPILL_KEYWORDS if key in text and str(text[key]).strip()), None)
    if raw is None:
        return None
    fields = [f.strip() for f in str(raw).split(",")]
    try:
        size = int(fields[0])
        channels = fields[1 : size + 1]
        matrix = np.asarray(fields[size + 1 : size + 1 + size * size], dtype=np.float64)
        matrix = matrix.reshape(size, size)
    except (ValueError, IndexError) as error:
        raise InputError(f"{file_name}: the spillover matrix ($SPILLOVER) is malformed ({error}).") from error
    if size == 0:
        return None
    unknown = [c for c in channels if c not in names]
    if unknown:
        raise InputError(
            f"{file_name}: the spillover matrix names channel(s) {', '.join(unknown)} that the file lacks."
        )
    return channels, matrix


def compensate(sample: FcsSample) -> np.ndarray:
    """Apply the file's spillover matrix to its events.

    Args:
        sample: A read FCS file.

    Returns:
        The compensated events (a copy); the raw events when the file carries no spillover matrix.

    Raises:
        InputError: The spillover matrix cannot be inverted.

    """
    events = sample.events.copy()
    if sample.spill is None:
        return events
    channels, matrix = sample.spill
    columns = [sample.names.index(c) for c in channels]
    try:
        inverse = np.linalg.inv(matrix)
    except np.linalg.LinAlgError as error:
        raise InputError(
            f"{sample.name}: the spillover matrix is singular and cannot be inverted."
        ) from error
    events[:, columns] = events[:, columns] @ inverse
    return events


def default_channels(sample: FcsSample) -> list[str]:
    """Channels used when none are chosen: those with a marker label, else every non-time channel."""
    signal = [
        n for n, m in zip(sample.names, sample.markers, strict=False) if n.lower() not in NON_SIGNAL_CHANNELS
    ]
    labelled = [
        n
        for n, m in zip(sample.names, sample.markers, strict=False)
        if m and m != n and n.lower() not in NON_SIGNAL_CHANNELS
    ]
    return labelled or signal


def channel_indices(sample: FcsSample, channels: list[str]) -> list[int]:
    """Column indices of ``channels``, each given as a ``$PnN`` detector or ``$PnS`` marker name.

    Matching is exact first, then case-insensitive.

    Raises:
        InputError: A channel is missing or ambiguous; the message lists what the file has.

    """
    indices = []
    for wanted in channels:
        index = _find_channel(sample, wanted)
        if index is None:
            raise InputError(
                f"{sample.name}: no channel named {wanted!r}. It has: {', '.join(sample.display_names())}."
            )
        indices.append(index)
    return indices


def _find_channel(sample: FcsSample, wanted: str) -> int | None:
    for fold in (str, str.casefold):
        key = fold(wanted.strip())
        hits = sorted(
            {
                i
                for i, (n, m) in enumerate(zip(sample.names, sample.markers, strict=False))
                if key in (fold(n), fold(m))
            }
        )
        if len(hits) > 1:
            raise InputError(
                f"{sample.name}: {wanted!r} names several channels "
                f"({', '.join(sample.names[i] for i in hits)}); use the detector ($PnN) name."
            )
        if hits:
            return hits[0]
    return None


def transform(values: np.ndarray, method: str = "arcsinh", cofactor: float = 150.0) -> np.ndarray:
    """Transform fluorescence or mass signals to a scale where populations look Gaussian.

    Args:
        values: Raw (compensated) values.
        method: ``arcsinh`` (``asinh(x / cofactor)``), ``logicle`` (Parks' biexponential with
            T=262144, W=0.5, M=4.5, A=0; output 0..4.5 like flowCore) or ``none``.
        cofactor: Arcsinh cofactor: about 150 for flow, 5 for mass cytometry.

    Returns:
        The transformed values, float64.

    Raises:
        InputError: Unknown method or non-positive cofactor.

    """
    values = np.asarray(values, dtype=np.float64)
    if method == "none":
        return values.copy()
    if method == "arcsinh":
        if cofactor <= 0:
            raise InputError(f"The arcsinh cofactor must be positive, got {cofactor}.")
        return np.arcsinh(values / cofactor)
    if method == "logicle":
        return logicle(values)
    raise InputError(f"Unknown transform {method!r}; choose one of {', '.join(TRANSFORMS)}.")


def logicle(
    values: np.ndarray, top: float = 262144.0, width: float = 0.5, decades: float = 4.5, extra: float = 0.0
) -> np.ndarray:
    """Parks' logicle transform (2006), evaluated by inverting the biexponential on a fine grid.

    Args:
        values: Raw values.
        top: Top of scale (``T``).
        width: Linearisation width in decades (``W``).
        decades: Decades of the full display (``M``).
        extra: Additional negative decades (``A``).

    Returns:
        Transformed values on a ``0..decades`` scale.

    """
    grid = np.linspace(-0.5, 1.5, 20001)
    data_values = _biexponential(grid, top, width, decades, extra)
    return np.interp(values, data_values, grid) * decades


def _biexponential(y: np.ndarray, top: float, width: float, decades: float, extra: float) -> np.ndarray:
    from scipy.optimize import brentq

    w = width / (decades + extra)
    x2 = extra / (decades + extra)
    x1 = x2 + w
    x0 = x2 + 2 * w
    b = (decades + extra) * np.log(10.0)
    d = brentq(lambda d: 2 * (np.log(d) - np.log(b)) + w * (b + d), 1e-12, b) if w > 0 else b
    c_a = np.exp(x0 * (b + d))
    mf_a = np.exp(b * x1) - c_a * np.exp(-d * x1)
    a = top / (np.exp(b) - mf_a - c_a * np.exp(-d))
    c, f = c_a * a, -mf_a * a
    upper = np.maximum(y, 2 * x1 - y)
    magnitude = a * np.exp(b * upper) - c * np.exp(-d * upper) + f
    return np.where(y >= x1, magnitude, -magnitude)
