"""Normalising single white-cell crops so that crops from different labs look alike to the classifier.

Crops arrive at any size, with the cell filling anything from a third to all of the frame, under
different stains and illumination. :func:`normalise_crop` white-balances the crop on its background,
finds the stained nucleus nearest the centre, and cuts a square around it whose side is a fixed multiple
of the nucleus size, resized to ``size`` pixels. The cell therefore always appears at the same scale and
position; neighbouring red cells stay visible and keep the cell's relative size readable.

:func:`read_crop` is the one way crop files are read (by the classifier, the descriptors and the bag
models): any colour format to RGB uint8, with messages that name the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_hematology.core.errors import InputError
from napari_hematology.core.io import MIN_SIDE, read_image, to_rgb8

MAX_CROP_SIDE = 2048
CROP_SIZE = 64
CONTEXT = 1.8
LOCATE_SIZE = 64
WHITE_PERCENTILE = 97.0
REDUCING_GAP = 1.5  # PIL downscales by whole factors first when shrinking more than this: much faster
# A normalised crop shows a cell when at least this fraction of its pixels absorbs (optical density of its
# darkest channel) more than VISIBLE_OD; background, glare and noise stay below.
VISIBLE_OD = 0.25
MIN_STAINED_FRACTION = 0.02


def crop_to_rgb8(crop: Any, name: str) -> np.ndarray:
    """Check one single-cell crop and convert it to 8-bit RGB at its own size.

    Args:
        crop: Image array (Y, X, 3), (Y, X, 4), 16-bit or float; numpy or dask (only read once its size
            has been checked).
        name: Name used in messages (file name or crop index).

    Returns:
        A (Y, X, 3) uint8 array; a blank (single-colour) crop becomes a white one: it shows no cell.

    Raises:
        InputError: The crop is grayscale, too small, or so large that it is a smear field.

    """
    shape = getattr(crop, "shape", ())
    if len(shape) >= 2 and max(shape[:2]) > MAX_CROP_SIDE:
        raise InputError(
            f"{name} is {shape[1]}x{shape[0]} pixels, too large for a single-cell crop (at most "
            f"{MAX_CROP_SIDE}). For a smear field or slide use 'napari-hematology analyze'."
        )
    array = np.asarray(crop)
    if _is_blank_colour_image(array):
        return np.full((*array.shape[:2], 3), 255, dtype=np.uint8)
    rgb, _ = to_rgb8(array, name=name)
    return rgb


def _is_blank_colour_image(array: np.ndarray) -> bool:
    """A channels-last colour image of usable size whose pixels all have one value."""
    return (
        array.ndim == 3
        and array.shape[-1] in (3, 4)
        and min(array.shape[:2]) >= MIN_SIDE
        and array.min() == array.max()
    )


def has_visible_cell(crops: np.ndarray) -> np.ndarray:
    """Whether each normalised (white-balanced) crop shows anything stained: a cell, not bare background.

    Args:
        crops: (n, size, size, 3) uint8 crops from :func:`normalise_crop`.

    Returns:
        (n,) booleans.

    """
    if len(crops) == 0:
        return np.zeros(0, dtype=bool)
    darkest = crops.min(axis=-1).reshape(len(crops), -1)
    stained = darkest < 255.0 * np.exp(-VISIBLE_OD)
    return stained.mean(axis=1) >= MIN_STAINED_FRACTION


def read_crop(path: str | Path) -> np.ndarray:
    """Read a single-cell crop file as 8-bit RGB at its own size.

    Raises:
        InputError: The file is missing, unreadable or corrupt, not a colour image, or too large for a
            crop; the message names it.

    """
    path = Path(path)
    return crop_to_rgb8(read_image(path).data, path.name)


def white_gain(rgb: np.ndarray) -> np.ndarray:
    """Per-channel gains that turn the bright background of a crop white.

    Args:
        rgb: (Y, X, 3) uint8 image (a thumbnail is enough).

    Returns:
        Three float32 gains.

    """
    pixels = rgb.reshape(-1, 3)
    rank = WHITE_PERCENTILE / 100.0 * (len(pixels) - 1)
    white = np.array(
        [np.searchsorted(np.cumsum(np.bincount(pixels[:, channel], minlength=256)), rank, side="right")
         for channel in range(3)],
        dtype=np.float32,
    )
    return 255.0 / np.maximum(white, 32.0)


def apply_gain(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Multiply each channel by its gain, saturating at 255."""
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    """How nucleus-like each pixel is under Romanowsky stains: dark in green, bluer than green.

    Args:
        rgb: (Y, X, 3) white-balanced uint8 image.

    Returns:
        A float32 (Y, X) score, higher for nuclei.

    """
    values = rgb.astype(np.float32) / 255.0
    green, blue = values[..., 1], values[..., 2]
    return (blue - green) + 0.5 * (1.0 - green)


def locate_nucleus(rgb: np.ndarray) -> tuple[float, float, float]:
    """Find the nucleus nearest the centre of a small white-balanced single-cell image.

    Args:
        rgb: (Y, X, 3) white-balanced uint8 image, ideally about 64 pixels wide.

    Returns:
        ``(centre_y, centre_x, extent)`` in pixels of ``rgb``; ``extent`` is the longer side of the
        nucleus bounding box. Falls back to the whole frame when no nucleus stands out.

    """
    score = nucleus_score(rgb)
    mask = _dilate(_erode(score > _otsu(score)))
    mask = _erode(_erode(_dilate(_dilate(mask))))
    labels, count = ndimage.label(mask)
    if count == 0:
        return rgb.shape[0] / 2, rgb.shape[1] / 2, max(rgb.shape[:2]) / CONTEXT
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=count + 1)[1:]
    centre_rows = np.bincount(flat, rows.ravel(), count + 1)[1:] / areas
    centre_cols = np.bincount(flat, cols.ravel(), count + 1)[1:] / areas
    offset = np.hypot(centre_rows - rgb.shape[0] / 2, centre_cols - rgb.shape[1] / 2)
    best = int(np.argmax(areas / (1.0 + (offset / max(rgb.shape[:2]) / 0.2) ** 2))) + 1
    rows, cols = np.nonzero(labels == best)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    return (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2, float(extent)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by the 3x3 cross (as scipy.ndimage, several times faster on small masks)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the 3x3 cross, everything outside the frame counting as background."""
    shrunk = mask.copy()
    shrunk[1:] &= mask[:-1]
    shrunk[:-1] &= mask[1:]
    shrunk[:, 1:] &= mask[:, :-1]
    shrunk[:, :-1] &= mask[:, 1:]
    shrunk[[0, -1], :] = False
    shrunk[:, [0, -1]] = False
    return shrunk


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold from a ``bins``-bin histogram (fast on small images)."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return high
    index = np.minimum(((values.ravel() - low) * (bins / (high - low))).astype(np.intp), bins - 1)
    counts = np.bincount(index, minlength=bins)
    centres = low + (np.arange(bins) + 0.5) * ((high - low) / bins)
    weight_below = np.cumsum(counts)[:-1]
    weight_above = len(values.ravel()) - weight_below
    sum_below = np.cumsum(counts * centres)[:-1]
    mean_below = sum_below / np.maximum(weight_below, 1)
    mean_above = (float((counts * centres).sum()) - sum_below) / np.maximum(weight_above, 1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return float(centres[int(np.argmax(between))])


def normalise_crop(rgb: np.ndarray, size: int = CROP_SIZE, context: float = CONTEXT) -> np.ndarray:
    """White-balance a single-cell crop and cut a square of ``context`` nucleus sizes around its nucleus.

    Args:
        rgb: (Y, X, 3) uint8 RGB crop with one white cell roughly centred.
        size: Side of the returned square, in pixels.
        context: Side of the cut square relative to the nucleus extent.

    Returns:
        A (size, size, 3) uint8 image; where the square leaves the crop, the crop is mirrored.

    """
    image = Image.fromarray(rgb)
    scale = LOCATE_SIZE / max(image.size)
    thumbnail = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.BILINEAR,
        reducing_gap=REDUCING_GAP,
    )
    thumbnail_pixels = np.asarray(thumbnail)
    gain = white_gain(thumbnail_pixels)
    centre_y, centre_x, extent = (
        value / scale for value in locate_nucleus(apply_gain(thumbnail_pixels, gain))
    )
    half = max(extent * context, 0.25 * min(image.size), 8.0) / 2
    box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
    return apply_gain(_cut_square(image, box, size), gain)


def _cut_square(image: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Resize the square ``box`` of ``image`` to ``size`` pixels, mirrored where it leaves the image."""
    scale = size / (box[2] - box[0])
    inside = (max(box[0], 0), max(box[1], 0), min(box[2], image.width), min(box[3], image.height))
    width = min(size, max(1, round((inside[2] - inside[0]) * scale)))
    height = min(size, max(1, round((inside[3] - inside[1]) * scale)))
    part = np.asarray(
        image.resize((width, height), Image.BILINEAR, box=inside, reducing_gap=REDUCING_GAP)
    )
    left = min(size - width, max(0, round((inside[0] - box[0]) * scale)))
    top = min(size - height, max(0, round((inside[1] - box[1]) * scale)))
    padding = ((top, size - height - top), (left, size - width - left), (0, 0))
    return np.pad(part, padding, mode="symmetric")
