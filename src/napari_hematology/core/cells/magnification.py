"""The pixel size of a smear image: set by the user, recorded in the file, or measured on its red cells.

Red cells are the ruler of every blood smear: their modal diameter is about 7.5 micrometres whatever the
objective, camera or stain. :func:`red_cell_diameter` finds it in optical density (which removes the
illumination): stained pixels are split from the background by Otsu's threshold, with white-cell nuclei
(purple) left out, and holes (the red cells' pale centres) are filled. In a crowded field the red cells
touch and overlap, and one connected object holds many of them, so each red cell is found as a peak of the
distance transform: a local maximum that no larger peak lies within reach of (the peaks are taken
largest first, and one closer to a kept peak than 0.9 of the larger radius is a shoulder of that cell).
The red-cell diameter is the median of the peaks' diameters weighted by their area (radius squared), so
that specks and platelets count little. Large images are measured on a few windows; each window is first
measured on a reduced copy and measured again finer when cells are small.

:func:`find_pixel_size` takes the first of: the user's value, the file's metadata, the red-cell ruler,
and the segmentation's reference pixel size (with a warning that says so). One field's ruler can be
misled (clumped or sparse red cells), so a batch agrees on one pixel size per camera:
:func:`camera_consensus` takes the median over the fields of one frame size and names the fields that
disagree with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_hematology.core.cells.segmentation import (
    SegmentationConfig,
    downsample,
    estimate_white,
    stain_maps,
)
from napari_hematology.core.cells.stain import od_tables
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import to_rgb8

RED_CELL_DIAMETER_UM = 7.5
# Annotated red-cell size (BCCD box side) / ruler diameter (twice the distance-transform peak),
# median over the BCCD train split: `python benchmarks/bench_segmentation.py --calibrate`.
RULER_CALIBRATION = 1.2814
MIN_PIXEL_SIZE_UM = 0.02
MAX_PIXEL_SIZE_UM = 5.0
MIN_RED_CELLS = 3
MIN_STAIN_OD = 0.1  # summed optical density below which a threshold only splits background noise
MIN_RADIUS_PX = 2.0
BORDER_FRACTION = 0.25
NUCLEUS_MARGIN_PX = 2
RULER_WINDOW = 1024
COARSE_SIDE = 640
FINE_DIAMETER_PX = 40.0
PEAK_WINDOW_PX = 5  # a distance-transform peak is the largest value in this window
SHOULDER_FRACTION = 0.9  # a peak this close to a larger one (in its radii) belongs to the same cell
COUNT_HALF_WIDTH = 0.2  # log units around the diameter within which a peak counts as a red cell
FEW_RED_CELLS = 15  # a lone field measured on fewer red cells than this gets a warning
CONSENSUS_TOLERANCE = 0.15  # a field further than this from its camera's consensus is named, not used

USER, METADATA, RULER, DEFAULT = "user", "metadata", "red-cell ruler", "default"
CONSENSUS = "red-cell ruler, camera consensus"


@dataclass(frozen=True)
class PixelSize:
    """The pixel size used for an image and how it was found.

    Attributes:
        um_per_px: Width of one pixel in micrometres.
        source: ``"user"``, ``"metadata"``, ``"red-cell ruler"`` or ``"default"``.
        note: One sentence for the user saying what was found and how.
        red_cells: How many red cells the ruler measured (0 when it was not used).

    """

    um_per_px: float
    source: str
    note: str
    red_cells: int = 0

    @property
    def is_fallback(self) -> bool:
        """Whether nothing could be measured and the default was assumed (worth a warning)."""
        return self.source == DEFAULT


def check_pixel_size(um_per_px: float, origin: str) -> float:
    """Refuse a pixel size no microscope gives.

    Args:
        um_per_px: The value, micrometres per pixel.
        origin: Where it comes from, for the message (``"--pixel-size"``).

    Returns:
        The value as a float.

    Raises:
        InputError: The value is not between :data:`MIN_PIXEL_SIZE_UM` and :data:`MAX_PIXEL_SIZE_UM`.

    """
    value = float(um_per_px)
    if not MIN_PIXEL_SIZE_UM <= value <= MAX_PIXEL_SIZE_UM:
        raise InputError(
            f"Pixel size {value:g} um/px ({origin}) is not plausible for a smear image: use a value "
            f"between {MIN_PIXEL_SIZE_UM} and {MAX_PIXEL_SIZE_UM} um/px (a 100x objective gives about "
            "0.05-0.1, a 20x one about 0.25-0.5), or leave it out to measure it on the red cells."
        )
    return value


def pixel_size_from_scale(scale: float, reference_um: float = SegmentationConfig.pixel_size_um) -> float:
    """Pixel size of images whose cells are ``scale`` times as wide as in the reference (BCCD) fields.

    Raises:
        InputError: ``scale`` is not positive, or gives an implausible pixel size.

    """
    if not scale > 0:
        raise InputError(f"Scale factor {scale:g} is out of range; use a positive value (1 = BCCD fields).")
    return check_pixel_size(reference_um / scale, f"--scale {scale:g}")


def red_cell_diameter(image, calibration: float = RULER_CALIBRATION) -> float | None:
    """Modal red-cell diameter of a smear image in pixels, or None when too few red cells are seen.

    Args:
        image: (Y, X, 3[+1]) array, numpy or dask; large images are measured on a few windows.
        calibration: Factor from the ruler's peak diameter to the red cell's full width.

    Raises:
        InputError: The image is not a usable colour image (grayscale, blank...).

    """
    return measure_red_cells(image, calibration)[0]


def measure_red_cells(image, calibration: float = RULER_CALIBRATION) -> tuple[float | None, int]:
    """Modal red-cell diameter in pixels (None when too few are seen) and how many red cells gave it.

    Args:
        image: (Y, X, 3[+1]) array, numpy or dask; large images are measured on a few windows.
        calibration: Factor from the ruler's peak diameter to the red cell's full width.

    Raises:
        InputError: The image is not a usable colour image (grayscale, blank...).

    """
    windows = list(_windows(image))
    factor = max(1, math.ceil(max(windows[0].shape[:2]) / COARSE_SIDE)) if windows else 1
    diameter, count = _pooled_diameter(windows, factor)
    if diameter is not None and diameter / factor < FINE_DIAMETER_PX and factor > 1:
        diameter, count = _pooled_diameter(windows, max(1, int(diameter // FINE_DIAMETER_PX)))
    return (None, count) if diameter is None else (diameter * calibration, count)


def find_pixel_size(
    image,
    *,
    reference_um: float = SegmentationConfig.pixel_size_um,
    name: str = "image",
    user_um: float | None = None,
    metadata_um: float | None = None,
    metadata_source: str | None = None,
) -> PixelSize:
    """Decide the pixel size of an image: the user's, else the file's, else the red cells', else the default.

    Args:
        image: (Y, X, 3[+1]) array, numpy or dask.
        reference_um: The default, assumed when nothing else is known.
        name: Image name for messages.
        user_um: The user's value (``--pixel-size`` or ``--scale``).
        metadata_um: The value recorded in the file, if any.
        metadata_source: Which metadata held it (``"Aperio MPP"``...).

    Returns:
        The pixel size and how it was found.

    Raises:
        InputError: The user's value is implausible, or the image is not a usable colour image.

    """
    if user_um is not None:
        value = check_pixel_size(user_um, "given")
        return PixelSize(value, USER, f"{name}: pixel size {value:.4g} um/px, set by the user.")
    notes = []
    if metadata_um is not None:
        origin = metadata_source or "file metadata"
        if MIN_PIXEL_SIZE_UM <= metadata_um <= MAX_PIXEL_SIZE_UM:
            return PixelSize(
                metadata_um, METADATA, f"{name}: pixel size {metadata_um:.4g} um/px, from {origin}."
            )
        notes.append(f"the file's {origin} says {metadata_um:g} um/px, which is not plausible;")
    diameter, red_cells = measure_red_cells(image)
    if diameter is not None and MIN_PIXEL_SIZE_UM <= RED_CELL_DIAMETER_UM / diameter <= MAX_PIXEL_SIZE_UM:
        value = RED_CELL_DIAMETER_UM / diameter
        note = (
            f"pixel size {value:.4g} um/px, measured on {red_cells} red cells (modal diameter "
            f"{diameter:.0f} px taken as {RED_CELL_DIAMETER_UM} um)."
        )
        if red_cells < FEW_RED_CELLS:
            note += (
                " Few red cells were measured, so this may be off: analyse several fields of the camera "
                "together (one pixel size is then agreed for all) or give --pixel-size."
            )
        return PixelSize(value, RULER, " ".join([f"{name}:", *notes, note]), red_cells)
    note = (
        f"no red cells to measure; assuming the default pixel size {reference_um:.4g} um/px (the BCCD "
        "fields the segmentation was tuned on, 100x objective). If cells look larger or smaller than "
        "there, give --pixel-size or --scale."
    )
    return PixelSize(reference_um, DEFAULT, " ".join([f"{name}:", *notes, note]))


def _windows(image):
    """The image itself, or a few windows of a large one (centre and four quarter points), as RGB uint8."""
    height, width = image.shape[:2]
    if height * width <= 2 * RULER_WINDOW**2:
        yield to_rgb8(np.asarray(image), "image")[0]
        return
    half = RULER_WINDOW // 2
    for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
        y0 = min(max(0, round(height * fy) - half), max(0, height - RULER_WINDOW))
        x0 = min(max(0, round(width * fx) - half), max(0, width - RULER_WINDOW))
        window = np.asarray(image[y0 : y0 + RULER_WINDOW, x0 : x0 + RULER_WINDOW])
        if window.min() != window.max():  # blank margins of a slide hold nothing to measure
            yield to_rgb8(window, "window")[0]


def _pooled_diameter(windows: list[np.ndarray], factor: int) -> tuple[float | None, int]:
    """Red-cell diameter (full-resolution pixels) over all windows reduced by ``factor``, and its count."""
    samples = [_peak_diameters(downsample(window, factor)) for window in windows]
    if not samples:
        return None, 0
    diameter, count = _weighted_median(np.concatenate(samples))
    return (None, count) if diameter is None else (diameter * factor, count)


def _peak_diameters(rgb: np.ndarray) -> np.ndarray:
    """Diameters of the red cells of a field: twice the distance-transform peak of each, in pixels."""
    tables = od_tables(estimate_white(rgb))
    score, total = stain_maps(rgb, tables)
    nuclei = ndimage.binary_dilation(
        score > SegmentationConfig.nucleus_threshold, iterations=NUCLEUS_MARGIN_PX
    )
    candidates = total[~nuclei]
    if candidates.size == 0 or candidates.min() == candidates.max():
        return np.zeros(0)
    from skimage.filters import threshold_otsu

    threshold = threshold_otsu(candidates)
    if threshold < MIN_STAIN_OD:
        return np.zeros(0)
    cells = ndimage.binary_fill_holes(ndimage.binary_opening((total > threshold) & ~nuclei))
    distance = ndimage.distance_transform_edt(cells)
    peaks = (distance == ndimage.maximum_filter(distance, size=PEAK_WINDOW_PX)) & (distance >= MIN_RADIUS_PX)
    rows, cols = np.nonzero(peaks)
    radii = distance[rows, cols]
    border = np.minimum.reduce([rows, cols, cells.shape[0] - 1 - rows, cells.shape[1] - 1 - cols])
    inside = border >= BORDER_FRACTION * radii  # the cell's centre is in the image
    return 2 * _separate_cells(rows[inside], cols[inside], radii[inside])


def _separate_cells(rows: np.ndarray, cols: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """The radii of the peaks that are cells of their own, largest first.

    A peak nearer a kept peak than :data:`SHOULDER_FRACTION` of the larger of their radii is a shoulder of
    the kept one's cell.
    """
    kept_rows, kept_cols, kept_radii = [], [], []
    for index in np.argsort(-radii, kind="stable"):
        y, x, radius = rows[index], cols[index], radii[index]
        if kept_radii:
            reach = SHOULDER_FRACTION * np.maximum(kept_radii, radius)
            if np.any(np.hypot(np.subtract(kept_rows, y), np.subtract(kept_cols, x)) < reach):
                continue
        kept_rows.append(y)
        kept_cols.append(x)
        kept_radii.append(radius)
    return np.asarray(kept_radii, dtype=float)


def _weighted_median(diameters: np.ndarray) -> tuple[float | None, int]:
    """Median of the diameters weighted by area (squared), and how many lie near it, or (None, count)."""
    if len(diameters) < MIN_RED_CELLS:
        return None, len(diameters)
    order = np.argsort(diameters)
    weights = np.cumsum(diameters[order] ** 2)
    median = float(diameters[order][np.searchsorted(weights, weights[-1] / 2)])
    return median, int((np.abs(np.log(diameters / median)) < COUNT_HALF_WIDTH).sum())


def camera_consensus(
    measured: dict[str, tuple[PixelSize, tuple[int, ...]]], tolerance: float = CONSENSUS_TOLERANCE
) -> tuple[dict[str, PixelSize], list[dict[str, Any]]]:
    """One pixel size per camera: the median of its fields' red-cell rulers, used for all of them.

    Fields of the same frame size are taken as one camera. Only fields whose pixel size came from the
    ruler are changed; the user's value, the file's metadata and the default stay. A camera with a single
    measured field keeps that field's own estimate.

    Args:
        measured: Per image name, its pixel size as found alone and its frame size (height, width).
        tolerance: Relative distance from the consensus beyond which a field is named as disagreeing.

    Returns:
        The pixel size to use per image, and one record per camera with a consensus: ``{"frame": [h, w],
        "um_per_px": float, "fields": n, "disagreeing": [{"image", "measured_um_per_px"}]}``.

    """
    cameras: dict[tuple[int, ...], list[str]] = {}
    for name, (size, frame) in measured.items():
        if size.source == RULER:
            cameras.setdefault(tuple(frame), []).append(name)
    chosen = {name: size for name, (size, _) in measured.items()}
    records = []
    for frame, names in cameras.items():
        if len(names) < 2:
            continue
        consensus = float(np.median([measured[name][0].um_per_px for name in names]))
        disagreeing = []
        for name in names:
            own = measured[name][0]
            if abs(own.um_per_px / consensus - 1) > tolerance:
                disagreeing.append({"image": name, "measured_um_per_px": round(own.um_per_px, 5)})
            note = (
                f"{name}: pixel size {consensus:.4g} um/px, the median red-cell ruler of the {len(names)} "
                f"fields of this camera ({frame[1]}x{frame[0]}); this field alone measured "
                f"{own.um_per_px:.4g}."
            )
            chosen[name] = PixelSize(consensus, CONSENSUS, note, own.red_cells)
        records.append(
            {"frame": list(frame), "um_per_px": round(consensus, 5), "fields": len(names),
             "disagreeing": disagreeing}
        )
    return chosen, records
