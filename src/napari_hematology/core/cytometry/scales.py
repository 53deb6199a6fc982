"""What the values of an FCS file already are, and so how to preprocess them.

An FCS file holds raw linear values, compensated linear values or transformed values (logicle, arcsinh,
log), and its keywords do not always say which: flowCore keeps ``$SPILLOVER`` after compensating and
logicle-transforming (FlowSOM's ``ff.fcs``). The values decide; keywords only explain, and a keyword that
contradicts the values is reported as a warning:

- transformed values fit a display scale: their 0.1-99.9th percentiles lie within ``TRANSFORMED_RANGE``
  (logicle 0..4.5, arcsinh up to about 8, log10 up to about 6), where linear cytometer values span
  hundreds to hundreds of thousands;
- compensated values no longer carry the spillover: among the events brightest in one dye, the lower
  edge of a detector it spills into sits near zero, where in raw values it sits near the spillover
  fraction; whichever of "as stored" and "compensated once" puts that edge nearer zero is the truth.

Keywords read: flowCore's ``transformation`` (``applied`` = made linear on reading, ``custom`` =
transformed) and ``flowCore_$PnRmax``; ``$PnE`` with decades on floating-point values (log values, as
Guava writes); ``$PnD`` (a display hint for linear values, as MACSQuant writes); ``$ORIGINALITY``;
FlowJo's ``Comp-`` prefix of compensated channels. Cytobank and FCS Express keep transforms in their
display settings and export linear values, so their files are judged by their values alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from napari_hematology.core.cytometry.fcs import TRANSFORMS, FcsSample, channel_indices, compensate, transform
from napari_hematology.core.errors import InputError

TRANSFORMED_RANGE = (-10.0, 12.0)
FLOW_COFACTOR = 150.0
MASS_COFACTOR = 5.0
SCATTER_PREFIXES = ("fsc", "ssc", "fs ", "ss ")
COMPENSATED_PREFIXES = ("comp-", "comp ", "compensated ")
MASS_CHANNEL = re.compile(r"^[A-Z][a-z]?\d{2,3}Di$")
MASS_CYTOMETERS = ("cytof", "helios", "dvs")
SPILL_MIN = 0.05
BRIGHT_QUANTILE = 0.98
EDGE_QUANTILE = 0.05
MIN_BRIGHT_EVENTS = 20
MIN_SPILL_PAIRS = 3
VOTE_MARGIN = 0.6


@dataclass
class Preprocessing:
    """What to do with one file's values before clustering, and why.

    Attributes:
        compensate: Apply the file's spillover matrix.
        transform: ``arcsinh``, ``logicle`` or ``none``.
        transform_channels: The chosen channels the transform applies to (the others are used as stored).
        cofactor: Arcsinh cofactor.
        state: What the values were found to be: ``raw``, ``compensated`` or ``transformed``.
        reasons: Why, one line per decision.
        warnings: Keywords that contradict the values, and explicit choices that go against them.

    """

    compensate: bool
    transform: str
    transform_channels: list[str]
    cofactor: float
    state: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what the values are and what is done with them."""
        steps = ["compensate with the file's spillover matrix" if self.compensate else "no compensation"]
        if self.transform == "none" or not self.transform_channels:
            steps.append("no transform")
        else:
            cofactor = f" (cofactor {self.cofactor:g})" if self.transform == "arcsinh" else ""
            steps.append(f"{self.transform}{cofactor} on {len(self.transform_channels)} channel(s)")
        return f"{self.state} values: {', '.join(steps)}"


def decide_preprocessing(
    sample: FcsSample,
    channels: list[str],
    transform: str = "auto",
    compensate: bool | str = "auto",
    cofactor: float | None = None,
) -> Preprocessing:
    """Decide compensation and transform for ``channels`` of one file from what its values already are.

    Transformed values are never compensated or transformed again unless asked for explicitly, and then
    with a warning. Scatter and the other channels are judged apart (FlowSOM and FlowJo leave scatter
    linear); within each group the majority decides, and channels that disagree are named.

    Args:
        sample: A read FCS file.
        channels: The channels to be clustered (``$PnN`` or ``$PnS`` names).
        transform: ``auto`` or one of ``arcsinh``, ``logicle``, ``none`` (used as given).
        compensate: ``auto``, or True / False (used as given).
        cofactor: Arcsinh cofactor; None picks 5 for mass cytometry and 150 for flow.

    Returns:
        The decision with its reasons and warnings.

    Raises:
        InputError: A channel is missing, or ``transform`` / ``compensate`` is not a known choice.

    """
    if transform != "auto" and transform not in TRANSFORMS:
        raise InputError(f"Unknown transform {transform!r}; choose auto or one of {', '.join(TRANSFORMS)}.")
    if compensate not in ("auto", True, False):
        raise InputError(f"compensate must be auto, True or False, got {compensate!r}.")
    scales = channel_scales(sample, channels)
    claims = {
        c: _keyword_claim(sample, k) for c, k in zip(channels, channel_indices(sample, channels), strict=True)
    }
    scatter = {c for c in channels if _is_scatter(sample, c)}
    reasons: list[str] = []
    treatment = _treatment(channels, scatter, scales, claims, reasons)
    warnings = _keyword_conflicts(claims, treatment)
    state = _state(
        sample, [c for c in channels if c not in scatter] or channels, treatment, reasons, warnings
    )
    do_compensate = _decide_compensation(sample, state, compensate, reasons, warnings)
    method, targets = _decide_transform(channels, treatment, transform, reasons, warnings)
    return Preprocessing(
        compensate=do_compensate,
        transform=method,
        transform_channels=targets,
        cofactor=cofactor if cofactor is not None else _default_cofactor(sample, reasons),
        state=state,
        reasons=reasons,
        warnings=warnings,
    )


def apply_preprocessing(sample: FcsSample, channels: list[str], preprocessing: Preprocessing) -> np.ndarray:
    """Compensate and transform ``channels`` of one file as decided.

    Returns:
        Events x channels, float64, in the order of ``channels``.

    """
    events = compensate(sample) if preprocessing.compensate else sample.events
    columns = channel_indices(sample, channels)
    values = events[:, columns].astype(np.float64)
    transformed = set(channel_indices(sample, preprocessing.transform_channels))
    targets = [k for k, column in enumerate(columns) if column in transformed]
    if targets and preprocessing.transform != "none":
        values[:, targets] = transform(values[:, targets], preprocessing.transform, preprocessing.cofactor)
    return values


def value_scale(sample: FcsSample, channel: str, preprocessing: Preprocessing) -> str:
    """The scale of one channel's values after preprocessing, in words for an axis label.

    Returns:
        ``arcsinh(x / <cofactor>)`` or ``logicle`` where the channel is transformed here, ``transformed in
        the file`` where the file's values already were, else ``linear``.

    """
    (column,) = channel_indices(sample, [channel])
    transformed = column in channel_indices(sample, preprocessing.transform_channels)
    if transformed and preprocessing.transform != "none":
        if preprocessing.transform == "arcsinh":
            return f"arcsinh(x / {preprocessing.cofactor:g})"
        return preprocessing.transform
    return "transformed in the file" if preprocessing.state == "transformed" else "linear"


def channel_scales(sample: FcsSample, channels: list[str]) -> dict[str, str]:
    """``linear``, ``transformed`` or ``constant`` for each channel, from its values alone."""
    low, high = TRANSFORMED_RANGE
    integers = sample.keywords.get("datatype", "").upper() == "I"
    scales = {}
    for channel, column in zip(channels, channel_indices(sample, channels), strict=True):
        values = sample.events[:, column]
        values = values[np.isfinite(values)]
        if values.size == 0 or np.ptp(values) == 0:
            scales[channel] = "constant"
            continue
        bottom, top = np.quantile(values, [0.001, 0.999])
        small = low <= bottom and top <= high
        scales[channel] = "transformed" if small and not integers else "linear"
    return scales


def compensation_evidence(sample: FcsSample) -> str:
    """``raw``, ``compensated`` or ``unknown``: whether the values still carry the file's spillover.

    For each dye that spills at least ``SPILL_MIN`` into another detector, the events brightest in that
    dye are taken; the lower edge of their detector-to-dye ratio is compared as stored and compensated
    once. Compensated values put that edge near zero; compensating them again drives it negative.
    """
    if sample.spill is None:
        return "unknown"
    names, matrix = sample.spill
    columns = [sample.names.index(c) for c in names]
    stored, once = sample.events[:, columns], compensate(sample)[:, columns]
    votes = []
    for source, target in zip(*np.nonzero(matrix >= SPILL_MIN), strict=True):
        if source == target:
            continue
        dye = stored[:, source]
        bright = (dye >= np.quantile(dye, BRIGHT_QUANTILE)) & (dye > 0)
        if bright.sum() < MIN_BRIGHT_EVENTS:
            continue
        edge_stored = np.quantile(stored[bright, target] / dye[bright], EDGE_QUANTILE)
        edge_once = np.quantile(once[bright, target] / dye[bright], EDGE_QUANTILE)
        votes.append(abs(edge_once) < abs(edge_stored))
    if len(votes) < MIN_SPILL_PAIRS:
        return "unknown"
    raw_share = float(np.mean(votes))
    if raw_share >= VOTE_MARGIN:
        return "raw"
    return "compensated" if raw_share <= 1 - VOTE_MARGIN else "unknown"


def _is_scatter(sample: FcsSample, channel: str) -> bool:
    name = sample.names[channel_indices(sample, [channel])[0]].lower()
    return name.startswith(SCATTER_PREFIXES)


def _treatment(
    channels: list[str],
    scatter: set[str],
    scales: dict[str, str],
    claims: dict[str, tuple[str | None, str]],
    reasons: list[str],
) -> dict[str, str]:
    """Per channel, the scale to treat it as.

    That is the majority of its group (scatter or signal), except where a keyword confirms what the
    channel's own values say.
    """
    treatment = dict(scales)
    for group in ([c for c in channels if c in scatter], [c for c in channels if c not in scatter]):
        linear = sum(scales[c] == "linear" for c in group)
        majority = "transformed" if sum(scales[c] == "transformed" for c in group) > linear else "linear"
        odd = [c for c in group if scales[c] not in ("constant", majority)]
        confirmed = [c for c in odd if claims[c][0] == scales[c]]
        for channel in odd:
            treatment[channel] = scales[channel] if channel in confirmed else majority
        if confirmed:
            reasons.append(f"{', '.join(confirmed)}: values and keywords agree, unlike the rest; kept apart.")
        if len(odd) > len(confirmed):
            others = [c for c in odd if c not in confirmed]
            reasons.append(
                f"{', '.join(others)} look {scales[others[0]]}, unlike the rest; treated as {majority}."
            )
    return treatment


def _keyword_conflicts(claims: dict[str, tuple[str | None, str]], treatment: dict[str, str]) -> list[str]:
    conflicts = [
        f"{channel}: {source} says {claim}, but the values look {treatment[channel]}; the values are used."
        for channel, (claim, source) in claims.items()
        if claim is not None and treatment[channel] not in ("constant", claim)
    ]
    return conflicts


def _state(
    sample: FcsSample, signal: list[str], treatment: dict[str, str], reasons: list[str], warnings: list[str]
) -> str:
    transformed = [c for c in signal if treatment[c] == "transformed"]
    linear = [c for c in signal if treatment[c] == "linear"]
    low, high = TRANSFORMED_RANGE
    if len(transformed) > len(linear):
        reasons.append(
            f"{len(transformed)} of {len(transformed) + len(linear)} signal channel(s) lie within "
            f"{low:g}..{high:g}: already transformed."
        )
        return "transformed"
    if any(name.lower().startswith(COMPENSATED_PREFIXES) for name in sample.names):
        reasons.append("Channel names carry a 'Comp-' prefix (FlowJo's mark of compensated values).")
        return "compensated"
    reasons.append(f"{len(linear)} signal channel(s) span more than {low:g}..{high:g}: linear values.")
    if compensation_evidence(sample) == "compensated":
        warnings.append(
            "The file carries a spillover matrix, but its values are already compensated (spillover into "
            "neighbouring detectors is gone)."
        )
        return "compensated"
    return "raw"


def _decide_compensation(
    sample: FcsSample, state: str, choice: bool | str, reasons: list[str], warnings: list[str]
) -> bool:
    if choice is not True and choice is not False:
        return _auto_compensation(sample, state, reasons, warnings)
    if choice and sample.spill is None:
        warnings.append("Compensation was asked for, but the file has no usable spillover matrix.")
        return False
    if choice and state != "raw":
        warnings.append(f"Compensating {state} values, as asked; the values suggest not to.")
    reasons.append(f"Compensation {'on' if choice else 'off'}, as asked.")
    return bool(choice)


def _auto_compensation(sample: FcsSample, state: str, reasons: list[str], warnings: list[str]) -> bool:
    if sample.spill is None:
        reasons.append("No spillover matrix: not compensated.")
        return False
    if np.allclose(sample.spill[1], np.eye(len(sample.spill[1]))):
        reasons.append("The spillover matrix is the identity: nothing to compensate.")
        return False
    if state == "transformed":
        warnings.append(
            "The file carries a spillover matrix, but its values are transformed: not compensated."
        )
        return False
    if state == "compensated":
        reasons.append("Values already compensated: not compensated again.")
        return False
    reasons.append("Raw values with a spillover matrix: compensated.")
    return True


def _decide_transform(
    channels: list[str], treatment: dict[str, str], choice: str, reasons: list[str], warnings: list[str]
) -> tuple[str, list[str]]:
    if choice != "auto":
        transformed = [c for c in channels if treatment[c] == "transformed"]
        if choice != "none" and transformed:
            warnings.append(f"Transforming {', '.join(transformed)} again ({choice}), as asked.")
        reasons.append(f"Transform {choice}, as asked.")
        return choice, [] if choice == "none" else list(channels)
    targets = [c for c in channels if treatment[c] == "linear"]
    if targets:
        reasons.append(f"arcsinh on the linear channel(s) {', '.join(targets)}.")
        return "arcsinh", targets
    reasons.append("Every chosen channel is already transformed: no transform.")
    return "none", []


def _default_cofactor(sample: FcsSample, reasons: list[str]) -> float:
    machine = sample.keywords.get("cyt", "").lower()
    mass_channels = sum(bool(MASS_CHANNEL.match(name)) for name in sample.names)
    if any(m in machine for m in MASS_CYTOMETERS) or mass_channels > len(sample.names) / 2:
        reasons.append(f"Mass cytometry: arcsinh cofactor {MASS_COFACTOR:g}.")
        return MASS_COFACTOR
    return FLOW_COFACTOR


def _keyword_claim(sample: FcsSample, column: int) -> tuple[str | None, str]:
    """What the keywords claim about one channel's scale, and which keyword claims it."""
    flowcore = sample.keywords.get("transformation", "").lower()
    if flowcore == "custom":
        declared = sample.parameter_keyword(column, "r")
        flowcore_max = sample.keywords.get(f"flowcore_p{column + 1}rmax", "")
        if not (flowcore_max and declared):
            return "transformed", "flowCore's transformation=custom"
        small = _number(flowcore_max) < _number(declared) / 100
        return ("transformed" if small else "linear"), f"flowCore_$P{column + 1}Rmax ({flowcore_max})"
    amplification = sample.parameter_keyword(column, "e").split(",")[0]
    if sample.keywords.get("datatype", "").upper() != "I" and _number(amplification) > 0:
        return "transformed", f"$P{column + 1}E ({amplification} log decades on floating-point values)"
    display = sample.parameter_keyword(column, "d")
    if display:
        return "linear", f"$P{column + 1}D ({display})"
    if flowcore == "applied":
        return "linear", "flowCore's transformation=applied"
    if sample.keywords.get("originality", "").lower() == "original":
        return "linear", "$ORIGINALITY=Original"
    return None, ""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
