"""Reading FCS 2.0/3.0/3.1 files, picking channels by name, compensation and signal transforms.

Files are parsed by flowio. What real instruments write and flowio refuses by default is read with
flowio's own options, and each such repair is noted on the sample: DATA offsets that disagree between
HEADER and TEXT (the span that holds ``$TOT`` times the event width is used, and named), a DATA end
offset one byte off, a HEADER with blank DATA offsets
(writers of large files leave them blank), several data sets in one file (each becomes a sample), and
integers of 24 bits (Cytek xP5), which flowio leaves undecoded and which are decoded here. Integer values
are masked to their ``$PnR`` range as the standard asks (Beckman ``.lmd``), and integer channels stored as
log channel numbers (``$PnE`` with decades) are converted to linear values, as flowCore and FlowKit do.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.io import list_files

FCS_SUFFIXES = (".fcs", ".lmd")
TRANSFORMS = ("arcsinh", "logicle", "none")
SPILL_KEYWORDS = ("spill", "spillover", "$spillover", "$spill", "comp")
NON_SIGNAL_CHANNELS = ("time", "event_length")
HEADER_BYTES = 58
HEADER_DATA_OFFSETS = slice(26, 42)
BLANK_OFFSETS_NOTE = (
    "The HEADER leaves the DATA offsets blank (as writers of large files do); TEXT's were used."
)


@dataclass
class FcsSample:
    """One data set of an FCS file in memory.

    Attributes:
        path: Where it was read from.
        events: Event values, shape ``(events, channels)``, float64: as stored, except that integers are
            masked to their ``$PnR`` range and log channel numbers are made linear.
        names: ``$PnN`` channel names (detector names), made unique.
        markers: ``$PnS`` labels (stain or marker names; empty strings where absent).
        spill: The spillover matrix carried by the file, with the channel names it applies to, or None.
        notes: Conversions and repairs made on the way that the user should know about.
        keywords: The TEXT keywords as flowio gives them (lower case, without ``$``).
        data_set: Which data set of the file this is (0 for the first).
        data_sets: How many data sets the file holds.

    """

    path: Path
    events: np.ndarray
    names: list[str]
    markers: list[str]
    spill: tuple[list[str], np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    keywords: dict[str, str] = field(default_factory=dict)
    data_set: int = 0
    data_sets: int = 1

    @property
    def name(self) -> str:
        """The file name, with the data set when the file holds several."""
        if self.data_sets == 1:
            return self.path.name
        return f"{self.path.name} (data set {self.data_set + 1} of {self.data_sets})"

    @property
    def stem(self) -> str:
        """The file name without its suffix, with ``_setN`` when the file holds several data sets."""
        if self.data_sets == 1:
            return self.path.stem
        return f"{self.path.stem}_set{self.data_set + 1}"

    def display_names(self) -> list[str]:
        """``marker (detector)`` where a marker is known, else the detector name."""
        return [f"{m} ({n})" if m and m != n else n for n, m in zip(self.names, self.markers, strict=False)]

    def parameter_keyword(self, index: int, letter: str) -> str:
        """The ``$Pn<letter>`` keyword of the channel at column ``index`` ('' when absent)."""
        return str(self.keywords.get(f"p{index + 1}{letter.lower()}", "")).strip()


def list_fcs(paths: list[str | Path] | str | Path) -> list[Path]:
    """Expand FCS files and folders (searched recursively) into a sorted list of FCS files.

    Raises:
        InputError: A path does not exist, or no FCS file was found.

    """
    return list_files(paths, FCS_SUFFIXES, "FCS files")


def read_fcs(path: str | Path) -> FcsSample:
    """Read the first data set of an FCS 2.0, 3.0 or 3.1 file.

    Args:
        path: The ``.fcs`` (or Beckman ``.lmd``) file.

    Returns:
        The events with channel names, marker labels and spillover matrix (if the file has one). When
        the file holds several data sets, a note says so; :func:`read_fcs_data_sets` reads them all.

    Raises:
        InputError: Missing file, not an FCS file, a file whose DATA segment is missing, or no events.

    """
    samples = read_fcs_data_sets(path)
    if len(samples) > 1:
        samples[0].notes.append(
            f"The file holds {len(samples)} data sets; only the first ({len(samples[0].events)} events) is "
            "used here."
        )
    return samples[0]


def read_fcs_data_sets(path: str | Path) -> list[FcsSample]:
    """Read every data set of an FCS file, each as its own sample (Guava Muse files hold several).

    Args:
        path: The ``.fcs`` (or Beckman ``.lmd``) file.

    Returns:
        One sample per data set, in file order; samples of a multi-data-set file are named
        ``<file> (data set k of n)`` with stem ``<stem>_setk``.

    Raises:
        InputError: Missing file, not an FCS file, a file whose DATA segment is missing, or no events.

    """
    from flowio.exceptions import FCSParsingError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    raw = path.read_bytes()
    _check_header(raw, path.name)
    try:
        data_sets = _read_data_sets(raw)
    except FCSParsingError as error:
        if "greater than file size" in str(error):
            raise InputError(f"{path.name}: cannot be read as FCS: {_missing_data(raw)}") from error
        raise InputError(f"{path.name}: cannot be read as FCS ({error}).") from error
    except (ValueError, KeyError, IndexError, OSError, NotImplementedError) as error:
        raise InputError(f"{path.name}: cannot be read as FCS ({type(error).__name__}: {error}).") from error
    return [
        _sample(path, data, events, notes, index, len(data_sets))
        for index, (data, events, notes) in enumerate(data_sets)
    ]


def _check_header(raw: bytes, file_name: str) -> None:
    if len(raw) < HEADER_BYTES or not raw.startswith(b"FCS"):
        raise InputError(
            f"{file_name}: cannot be read as FCS: it is {len(raw):,} bytes long and does not start with an "
            "FCS header (FCS2.0, FCS3.0 or FCS3.1)."
        )


def _missing_data(raw: bytes) -> str:
    end = raw[HEADER_DATA_OFFSETS].split()[-1:]
    where = (
        f"should end at byte {int(end[0]):,}" if end and end[0].isdigit() else "lies past the end of the file"
    )
    return (
        f"its DATA segment {where}, but the file has only {len(raw):,} bytes: it holds the HEADER and TEXT "
        "without the events (a header-only or truncated file)."
    )


def _read_data_sets(raw: bytes) -> list[tuple[object, np.ndarray, list[str]]]:
    """Parse each data set (following ``$NEXTDATA``) into (flowio data, events, notes)."""
    data_sets, offset = [], 0
    while True:
        raw, blank_offsets = _fill_blank_data_offsets(raw, offset)
        notes = [BLANK_OFFSETS_NOTE] if blank_offsets else []
        data = _flow_data(raw, offset, notes, ignore_offset_discrepancy=blank_offsets)
        data_sets.append((data, _events(raw, offset, data, notes), notes))
        next_data = int(str(data.text.get("nextdata", "0")).strip() or 0)
        if next_data <= 0 or offset + next_data >= len(raw):
            return data_sets
        offset += next_data


def _fill_blank_data_offsets(raw: bytes, offset: int) -> tuple[bytes, bool]:
    """Write zeros into blank HEADER DATA offsets, which flowio cannot parse; zeros defer to TEXT."""
    start, stop = offset + HEADER_DATA_OFFSETS.start, offset + HEADER_DATA_OFFSETS.stop
    if raw[start:stop].strip():
        return raw, False
    return raw[:start] + b"       0       0" + raw[stop:], True


def _flow_data(raw: bytes, offset: int, notes: list[str], **options):
    """Parse one data set with flowio, allowing the offset slips that real writers make (noted)."""
    import flowio
    from flowio.exceptions import DataOffsetDiscrepancyError, FCSParsingError

    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return flowio.FlowData(io.BytesIO(raw), nextdata_offset=offset, **options)
        except DataOffsetDiscrepancyError:
            if options.get("ignore_offset_discrepancy"):
                raise
            options.update(_data_span_options(raw, offset, notes))
        except FCSParsingError as error:
            if "off by 1" not in str(error) or options.get("ignore_offset_error"):
                raise
            options["ignore_offset_error"] = True
            notes.append(
                "The DATA end offset is one byte past the data (a common writer slip); read without it."
            )


def _data_span_options(raw: bytes, offset: int, notes: list[str]) -> dict:
    """Choose between the HEADER's and TEXT's DATA offsets when they disagree (noted).

    The span whose length is ``$TOT`` events times the event width (from ``$DATATYPE``, ``$PAR`` and
    ``$PnB``) and that lies within the file is used; TEXT's when both are. When neither holds exactly that
    many bytes, the first that lies within the file and holds at least that many is used.

    Raises:
        ValueError: Neither span holds ``$TOT`` events within the file.

    """
    data = _text_only(raw, offset)
    text = data.text
    spans = {
        "TEXT": (_keyword_int(text, "begindata"), _keyword_int(text, "enddata")),
        "HEADER": (data.header["data_start"], data.header["data_stop"]),
    }
    width = _event_width(text)
    events = _keyword_int(text, "tot")
    needed = None if width is None or events is None else events * width
    described = ", ".join(f"{name} bytes {start}-{stop}" for name, (start, stop) in spans.items())
    within = {
        name: (start, stop)
        for name, (start, stop) in spans.items()
        if start is not None and stop is not None and 0 < start <= stop and offset + stop < len(raw)
    }
    if needed is None:
        chosen, why = ("TEXT" if "TEXT" in within else next(iter(within), None)), "the event width is unknown"
    else:
        exact = [name for name, (start, stop) in within.items() if stop - start + 1 == needed]
        longer = [name for name, (start, stop) in within.items() if stop - start + 1 >= needed]
        chosen = (exact or longer or [None])[0]
        size = f"$TOT {events:,} x {width} bytes per event = {needed:,} bytes"
        why = f"it holds {size}" if exact else f"neither holds exactly {size}; it holds at least that many"
    if chosen is None:
        raise ValueError(
            f"the HEADER and TEXT DATA offsets disagree ({described}) and neither span holds "
            f"{'the events' if needed is None else f'{needed:,} bytes ($TOT x event width)'} within the file"
        )
    notes.append(
        f"HEADER and TEXT disagree on the DATA segment ({described}); {chosen}'s span was used: {why}."
    )
    return {"ignore_offset_discrepancy": True, "use_header_offsets": chosen == "HEADER"}


def _text_only(raw: bytes, offset: int):
    """HEADER and TEXT of a data set, whichever of the two DATA spans lies within the file."""
    import flowio
    from flowio.exceptions import FCSParsingError

    for use_header in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return flowio.FlowData(
                    io.BytesIO(raw), nextdata_offset=offset, only_text=True, ignore_offset_discrepancy=True,
                    use_header_offsets=use_header,
                )
        except FCSParsingError:
            if use_header:
                raise
    raise AssertionError("unreachable")


def _keyword_int(text: dict, key: str) -> int | None:
    try:
        return int(str(text.get(key, "")).strip())
    except ValueError:
        return None


def _event_width(text: dict) -> int | None:
    """Bytes per event of a list-mode DATA segment, or None when it cannot be known (ASCII, no $PnB)."""
    channels = _keyword_int(text, "par")
    kind = str(text.get("datatype", "")).strip().upper()
    if channels is None:
        return None
    if kind in ("F", "D"):
        return channels * (4 if kind == "F" else 8)
    if kind != "I":
        return None
    bits = [_keyword_int(text, f"p{number}b") for number in range(1, channels + 1)]
    if any(b is None or b % 8 for b in bits):
        return None
    return sum(bits) // 8


def _events(raw: bytes, offset: int, data, notes: list[str]) -> np.ndarray:
    if data.events is None:  # flowio leaves integers other than 8, 16 or 32 bits undecoded
        values = _decode_integers(raw, offset, data, notes)
    else:
        values = np.asarray(data.as_array(preprocess=False), dtype=np.float64)
    if str(data.data_type).upper() == "I":
        _linearise_log_channels(values, data, notes)
    return values


def _decode_integers(raw: bytes, offset: int, data, notes: list[str]) -> np.ndarray:
    """Decode whole-byte integers of any width, masked to the next power of two of ``$PnR``."""
    widths = [int(data.text[f"p{i}b"]) for i in range(1, data.channel_count + 1)]
    listed = "/".join(str(width) for width in sorted(set(widths)))
    if any(width % 8 for width in widths):
        raise ValueError(f"integers of {listed} bits are not whole bytes")
    notes.append(f"Integers of {listed} bits, which flowio does not decode, were decoded here.")
    sizes = [width // 8 for width in widths]
    text_start = int(str(data.text.get("begindata", "0")).strip() or 0)
    start = offset + (text_start or data.header["data_start"])
    count = data.event_count
    block = np.frombuffer(raw, np.uint8, count=count * sum(sizes), offset=start).reshape(count, -1)
    little_endian = str(data.text.get("byteord", "")).startswith("1")
    columns, position = [], 0
    for size in sizes:
        part = block[:, position : position + size].astype(np.uint64)
        position += size
        value = np.zeros(count, np.uint64)
        for byte in (part[:, ::-1] if little_endian else part).T:
            value = (value << np.uint64(8)) | byte
        columns.append(value)
    masks = np.array([_next_power_of_two(int(r)) - 1 for r in data.pnr_values], dtype=np.uint64)
    return (np.column_stack(columns) & masks).astype(np.float64)


def _next_power_of_two(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def _linearise_log_channels(values: np.ndarray, data, notes: list[str]) -> None:
    logged = []
    for number, channel in sorted(data.channels.items()):
        decades, zero = channel["pne"]
        if decades > 0:
            values[:, number - 1] = 10 ** (decades * values[:, number - 1] / channel["pnr"]) * zero
            logged.append(str(channel["pnn"]).strip())
    if logged:
        notes.append(f"{_listed(logged)}: stored as log channel numbers ($PnE); converted to linear.")


def _listed(names: list[str], most: int = 6) -> str:
    return ", ".join(names) if len(names) <= most else f"{len(names)} channels ({', '.join(names[:3])}, ...)"


def _sample(path: Path, data, events: np.ndarray, notes: list[str], index: int, total: int) -> FcsSample:
    sample = FcsSample(
        path=path,
        events=events,
        names=_unique_names([str(n).strip() for n in data.pnn_labels], notes),
        markers=[str(m or "").strip() for m in data.pns_labels],
        notes=notes,
        keywords={str(k): str(v) for k, v in data.text.items()},
        data_set=index,
        data_sets=total,
    )
    if events.ndim != 2 or events.shape[0] == 0:
        raise InputError(f"{sample.name}: the file holds no events.")
    sample.spill = _parse_spill(data.text, sample.names, notes)
    return sample


def _unique_names(names: list[str], notes: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        unique.append(name if counts[name] == 1 else f"{name} ({counts[name]})")
    repeated = [name for name, count in counts.items() if count > 1]
    if repeated:
        notes.append(
            f"Channel name(s) {', '.join(repeated)} appear more than once ($PnN); the repeats were renamed "
            "'<name> (2)', '<name> (3)', ..."
        )
    return unique


def _parse_spill(text: dict, names: list[str], notes: list[str]) -> tuple[list[str], np.ndarray] | None:
    """The spillover matrix, or None with a note when it is absent, empty or unusable."""
    key = next((key for key in SPILL_KEYWORDS if key in text and str(text[key]).strip()), None)
    if key is None:
        return None
    fields = [f.strip() for f in str(text[key]).split(",")]
    try:
        size = int(fields[0])
        channels = fields[1 : size + 1]
        matrix = np.asarray(fields[size + 1 : size + 1 + size * size], dtype=np.float64).reshape(size, size)
    except (ValueError, IndexError) as error:
        notes.append(f"The spillover matrix (${key.upper()}) is malformed ({error}); it is not used.")
        return None
    if size == 0:
        return None
    unknown = [c for c in channels if c not in names]
    if unknown:
        notes.append(
            f"The spillover matrix (${key.upper()}) names channel(s) {', '.join(unknown)} that the file "
            "lacks; it is not used."
        )
        return None
    return channels, matrix


def usable_channels(samples: list[FcsSample], channels: list[str]) -> tuple[list[str], list[str]]:
    """Leave out channels on which every event has the same value (a flag, a dead detector).

    Args:
        samples: The batch.
        channels: Chosen channels (``$PnN`` or ``$PnS`` names).

    Returns:
        The channels that vary in at least one sample, in the given order, and one warning per channel
        left out; when none varies, every channel and one warning saying so.

    Raises:
        InputError: A channel is missing.

    """
    usable, left_out = [], []
    for channel in channels:
        columns = [(sample, channel_indices(sample, [channel])[0]) for sample in samples]
        values = np.concatenate([sample.events[:, column] for sample, column in columns])
        if values.size and np.ptp(values) == 0:
            sample, column = columns[0]
            left_out.append(
                f"{sample.display_names()[column]}: every event has the value {values[0]:g} (a flag or a "
                "dead detector); left out of clustering."
            )
        else:
            usable.append(channel)
    if not usable:
        # nothing varies: keep the channels (one population when the number of clusters is left to the
        # data; a given number of clusters is refused when fitting)
        return list(channels), [
            f"Every chosen channel is constant ({', '.join(channels)}): every event has the same values, "
            "so they form one population."
        ]
    return usable, left_out


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
