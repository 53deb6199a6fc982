"""Where to read a smear: the monolayer, found from red-cell coverage and overlap.

A technologist counts where red cells lie side by side, barely touching: towards the head of the smear
they pile up (overlap) and at the feathered edge they thin out and flatten. The slide is read at about
two micrometres per pixel (the coarsest pyramid level that fine), window by window, and cut into blocks of
about 100 µm. For each block two numbers are measured:

- *coverage*: the fraction of its pixels that are stained (summed optical density above the glass, as
  Otsu's threshold separates them over the whole slide);
- *overlap*: the fraction of its stained pixels darker than ``overlap_factor`` times the optical density of
  a single red-cell layer, taken as the median stained density of the sparser half of the blocks.

Blocks with enough coverage and little overlap form the reading area; small islands are dropped and the
rest is returned as polygons in full-resolution slide pixels. Without pixel-size metadata the slide is
read at about 8,000 pixels across and cut into 100 blocks along its longer side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_hematology.core.cells.segmentation import (
    SegmentationConfig,
    estimate_white,
    stain_maps,
)
from napari_hematology.core.cells.stain import od_tables
from napari_hematology.core.io import SmearImage, to_rgb8
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

READ_PIXEL_UM = 2.0
BLOCK_UM = 100.0
FALLBACK_READ_SIDE = 8192
FALLBACK_BLOCKS = 100
WINDOW = 2048
OD_BINS = np.linspace(0.0, 4.0, 41)
OVERVIEW_SIDE = 2048
MAX_SINGLE_OD = 1.5


@dataclass
class ReadingAreaConfig:
    """Thresholds of the reading area (set on synthetic smears; see docs/whole_slide.md).

    Attributes:
        min_coverage: Least fraction of a block covered by stained cells (below: feathered edge, glass).
        max_overlap: Largest fraction of stained pixels in overlapping cells (above: too thick).
        overlap_factor: Optical density, relative to one red-cell layer, that counts as overlap.
        min_island: Smallest part of the area kept, as a fraction of the largest part.

    """

    min_coverage: float = 0.25
    max_overlap: float = 0.15
    overlap_factor: float = 1.6
    min_island: float = 0.2


@dataclass
class ReadingArea:
    """The reading area of a smear.

    Attributes:
        polygons: ``(N, 2)`` arrays of ``(y, x)`` vertices in full-resolution pixels.
        mask: Per block: inside the reading area.
        coverage: Per block: stained fraction.
        overlap: Per block: fraction of stained pixels in overlapping cells.
        block_px: Side of a block in full-resolution pixels.
        notes: What the user should know about how it was found.

    """

    polygons: list[np.ndarray]
    mask: np.ndarray
    coverage: np.ndarray
    overlap: np.ndarray
    block_px: float
    notes: list[str] = field(default_factory=list)


def slide_overview(image: SmearImage, side: int = OVERVIEW_SIDE) -> tuple[np.ndarray, float]:
    """A small RGB picture of the whole slide, read from the pyramid.

    Args:
        image: The opened slide.
        side: Wanted length of the longer side (pixels); the result is between ``side`` and twice that
            when the slide is larger.

    Returns:
        The RGB uint8 overview and its downsampling factor relative to full resolution.

    """
    level, factor = _level_at_most(image, max(image.data.shape[:2]) / side)
    array = image.levels[level]
    step = max(1, int(max(array.shape[:2]) // (2 * side)) + 1) if max(array.shape[:2]) > 2 * side else 1
    overview = np.asarray(array[::step, ::step])
    rgb, _ = to_rgb8(overview, "slide overview")
    return rgb, image.data.shape[1] / rgb.shape[1]


def _level_at_most(image: SmearImage, downsample: float) -> tuple[int, float]:
    """The coarsest level whose downsampling factor does not exceed ``downsample``, and its factor."""
    width = image.data.shape[1]
    factors = [width / level.shape[1] for level in image.levels]
    fitting = [index for index, factor in enumerate(factors) if factor <= downsample * 1.001] or [0]
    best = max(fitting, key=lambda index: factors[index])
    return best, factors[best]


def find_reading_area(
    image: SmearImage,
    config: ReadingAreaConfig | None = None,
    segmentation: SegmentationConfig | None = None,
    pixel_size_um: float | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> ReadingArea:
    """Find the monolayer of a smear, where cells are counted.

    Args:
        image: The opened slide (its ``pixel_size_um`` sets the scale when known).
        config: Reading-area thresholds.
        segmentation: Segmentation settings (their ``background_od`` separates glass from cells).
        pixel_size_um: The slide's pixel size; None takes the one its file records, if any.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The reading area with its per-block measurements.

    """
    config = config or ReadingAreaConfig()
    segmentation = segmentation or SegmentationConfig()
    level, downsample, block, notes = _reading_scale(image, pixel_size_um or image.pixel_size_um)
    array = image.levels[level]
    overview, _ = slide_overview(image)
    tables = od_tables(estimate_white(overview))
    counts, histograms = _block_histograms(array, block, tables, progress, should_stop)
    stained_bins = OD_BINS[:-1] >= _glass_threshold(histograms.sum(axis=(0, 1)), segmentation.background_od)
    stained = histograms[..., stained_bins].sum(axis=-1)
    coverage = stained / np.maximum(counts, 1)
    single_layer = _single_layer_od(histograms, coverage, stained_bins)
    overlapping = histograms[..., OD_BINS[:-1] >= config.overlap_factor * single_layer].sum(axis=-1)
    overlap = overlapping / np.maximum(stained, 1)
    mask = _clean((coverage >= config.min_coverage) & (overlap <= config.max_overlap), config.min_island)
    block_px = block * downsample
    if not mask.any():
        notes.append("No monolayer found (every part is too thick or too thin); the whole slide is read.")
    return ReadingArea(_mask_polygons(mask, block_px), mask, coverage, overlap, block_px, notes)


def _reading_scale(image: SmearImage, pixel_size_um: float | None) -> tuple[int, float, int, list[str]]:
    """The level to read, its downsampling factor, the block side at that level and notes."""
    if pixel_size_um:
        level, downsample = _level_at_most(image, READ_PIXEL_UM / pixel_size_um)
        block = max(2, round(BLOCK_UM / (pixel_size_um * downsample)))
        return level, downsample, block, []
    level, downsample = _level_at_most(image, max(image.data.shape[:2]) / FALLBACK_READ_SIDE)
    block = max(2, round(max(image.levels[level].shape[:2]) / FALLBACK_BLOCKS))
    note = (
        "The slide records no pixel size, so the reading area was measured in blocks of 1/100 of the "
        "slide's length instead of 100 µm."
    )
    return level, downsample, block, [note]


def _block_histograms(array, block, tables, progress, should_stop):
    """Per block: its pixel count and the histogram of its pixels' summed optical density."""
    height, width = array.shape[:2]
    histograms = np.zeros((-(-height // block), -(-width // block), len(OD_BINS) - 1), np.int32)
    step = max(block, WINDOW // block * block)
    windows = [(y, x) for y in range(0, height, step) for x in range(0, width, step)]
    for y, x in tracked(windows, len(windows), progress, should_stop, "measuring the smear"):
        rgb = np.asarray(array[y : y + step, x : x + step])[..., :3]
        _, total = stain_maps(rgb, tables)
        bins = np.clip(np.digitize(total, OD_BINS) - 1, 0, len(OD_BINS) - 2)
        rows, cols = -(-rgb.shape[0] // block), -(-rgb.shape[1] // block)
        block_of = (np.arange(rgb.shape[0]) // block)[:, None] * cols + (np.arange(rgb.shape[1]) // block)
        local = np.bincount(
            (block_of * (len(OD_BINS) - 1) + bins).ravel(), minlength=rows * cols * (len(OD_BINS) - 1)
        )
        histograms[y // block : y // block + rows, x // block : x // block + cols] += local.reshape(
            rows, cols, -1
        ).astype(np.int32)
    return histograms.sum(axis=-1), histograms


def _glass_threshold(histogram: np.ndarray, background_od: float) -> float:
    """Summed optical density separating glass from cells.

    Otsu's threshold between glass and single red cells (pixels darker than ``MAX_SINGLE_OD`` are left out
    so that piled-up cells do not pull it above single ones), and at least ``background_od``.
    """
    from skimage.filters import threshold_otsu

    centres = (OD_BINS[:-1] + OD_BINS[1:]) / 2
    lighter = centres < MAX_SINGLE_OD
    if np.count_nonzero(histogram[lighter]) < 2:
        return background_od
    return max(background_od, float(threshold_otsu(hist=(histogram[lighter], centres[lighter]))))


def _single_layer_od(histograms: np.ndarray, coverage: np.ndarray, stained_bins: np.ndarray) -> float:
    """Summed optical density of one red-cell layer.

    It is the median stained density of the sparser half of the blocks, where red cells overlap least.
    """
    covered = coverage[coverage > 0]
    if covered.size == 0:
        return float(OD_BINS[-1])
    sparse = (coverage > 0) & (coverage <= np.median(covered))
    histogram = np.where(stained_bins, histograms[sparse].sum(axis=0), 0)
    cumulative = np.cumsum(histogram)
    middle = int(np.searchsorted(cumulative, cumulative[-1] / 2))
    return float((OD_BINS[middle] + OD_BINS[middle + 1]) / 2)


def _clean(mask: np.ndarray, min_island: float) -> np.ndarray:
    """Close gaps of one block, fill holes and drop islands smaller than ``min_island`` of the largest."""
    padded = np.pad(mask, 1)
    closed = ndimage.binary_opening(ndimage.binary_closing(padded))[1:-1, 1:-1] | mask
    filled = ndimage.binary_fill_holes(ndimage.binary_opening(closed))
    labels, count = ndimage.label(filled)
    if count == 0:
        return filled
    sizes = ndimage.sum(filled, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= min_island * sizes.max()) + 1
    return np.isin(labels, keep)


def _mask_polygons(mask: np.ndarray, block_px: float) -> list[np.ndarray]:
    """Outlines of the block mask as polygons in full-resolution pixels."""
    from skimage.measure import approximate_polygon, find_contours

    polygons = []
    for contour in find_contours(np.pad(mask.astype(float), 1), 0.5):
        simplified = approximate_polygon(contour, tolerance=0.5)[:-1]
        if len(simplified) >= 3:
            polygons.append((simplified - 1 + 0.5) * block_px)
    return polygons


def inside_polygons(points_yx: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Which points lie inside any of the polygons (both as ``(y, x)``).

    Args:
        points_yx: ``(M, 2)`` array.
        polygons: ``(N, 2)`` arrays.

    Returns:
        Boolean array of length M.

    """
    from skimage.measure import points_in_poly

    points = np.asarray(points_yx, dtype=float).reshape(-1, 2)
    inside = np.zeros(len(points), dtype=bool)
    for polygon in polygons:
        inside |= points_in_poly(points, np.asarray(polygon, dtype=float))
    return inside
