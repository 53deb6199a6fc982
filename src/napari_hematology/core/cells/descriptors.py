"""Reading single-cell crops, and label-free descriptors of them: colour, nucleus shape and texture.

The descriptors need no weights and learn nothing, so they describe cells for attention MIL without
training an encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_hematology.core.cells.crops import read_crop
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

DESCRIPTOR_SIZE = 64  # side crops are resized to before they are described
HISTOGRAM_BINS = 8
CHROMA_BINS = 6
LBP_POINTS = 8


def resize_crop(rgb: np.ndarray, size: int = DESCRIPTOR_SIZE) -> np.ndarray:
    """Resize a whole RGB uint8 crop to ``size`` x ``size`` (anti-aliased), keeping uint8."""
    from skimage.transform import resize

    return resize(rgb, (size, size), anti_aliasing=True, preserve_range=True).astype(np.uint8)


def _nucleus_mask(rgb: np.ndarray) -> np.ndarray:
    """Romanowsky-stained nuclei are the most blue-violet (low green, high blue) pixels."""
    from skimage.filters import threshold_otsu

    as_float = rgb.astype(np.float32)
    violet = as_float[..., 2] - as_float[..., 1]
    if violet.max() <= violet.min():
        return np.zeros(violet.shape, dtype=bool)
    return violet > threshold_otsu(violet)


def _shape_features(mask: np.ndarray) -> list[float]:
    from skimage.measure import label, regionprops

    components = label(mask)
    regions = sorted(regionprops(components), key=lambda region: -region.area)
    if not regions:
        return [0.0] * 6
    largest = regions[0]
    total_area = float(mask.sum())
    return [
        total_area / mask.size,
        float(len([r for r in regions if r.area >= 0.05 * total_area])),
        float(largest.solidity),
        float(largest.eccentricity),
        largest.perimeter / max(np.sqrt(largest.area), 1.0),
        largest.area / max(total_area, 1.0),
    ]


def _colour_features(rgb: np.ndarray, mask: np.ndarray) -> list[float]:
    from skimage.color import rgb2hsv, rgb2lab

    lab = rgb2lab(rgb)
    hsv = rgb2hsv(rgb)
    features: list[float] = []
    for region in (np.ones_like(mask), mask, ~mask):
        pixels = lab[region] if region.any() else lab.reshape(-1, 3)
        features += list(pixels.mean(axis=0)) + list(pixels.std(axis=0))
    for channel in range(3):
        histogram, _ = np.histogram(hsv[..., channel], bins=HISTOGRAM_BINS, range=(0.0, 1.0))
        features += list(histogram / histogram.sum())
    chroma, _, _ = np.histogram2d(
        lab[..., 1].ravel(), lab[..., 2].ravel(), bins=CHROMA_BINS, range=((-40, 60), (-60, 40))
    )
    features += list(chroma.ravel() / chroma.sum())
    return features


def _texture_features(rgb: np.ndarray, mask: np.ndarray) -> list[float]:
    from skimage.color import rgb2gray
    from skimage.feature import local_binary_pattern

    gray = (rgb2gray(rgb) * 255).astype(np.uint8)
    patterns = local_binary_pattern(gray, LBP_POINTS, 1, method="uniform")
    features: list[float] = []
    for region in (np.ones_like(mask), mask):
        values = patterns[region] if region.any() else patterns.ravel()
        histogram, _ = np.histogram(values, bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2))
        features += list(histogram / max(histogram.sum(), 1))
    return features


def describe_crop(rgb: np.ndarray) -> np.ndarray:
    """Label-free descriptor of one RGB crop (colour statistics, nucleus shape, texture)."""
    mask = _nucleus_mask(rgb)
    values = _colour_features(rgb, mask) + _shape_features(mask) + _texture_features(rgb, mask)
    return np.asarray(values, dtype=np.float32)


def read_crops(
    paths: Sequence[str | Path],
    size: int = DESCRIPTOR_SIZE,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> np.ndarray:
    """Read many single-cell crops, resized to ``size`` x ``size``.

    Args:
        paths: Crop image files.
        size: Side the crops are resized to.
        progress: Called as ``progress(done, total, message)``.
        should_stop: Returns True to cancel.

    Returns:
        A uint8 array (cells, size, size, 3).

    Raises:
        InputError: No crops, or a crop cannot be read; the message names it.

    """
    if not len(paths):
        raise InputError("No cell crops given.")
    return np.stack(
        [
            resize_crop(read_crop(path), size)
            for path in tracked(paths, len(paths), progress, should_stop, "reading cells")
        ]
    )
