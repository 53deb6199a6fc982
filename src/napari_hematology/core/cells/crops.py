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

from dataclasses import dataclass
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
LOCATE_SIZE = 96
NBINS = 64
# Nucleus location (chosen on the masked crops of wbc_seg and ALL-IDB2, see docs/cell_classifier.md).
MIN_NUCLEUS_CONTRAST = 0.15  # nucleus score above the background's mean for a nucleus to count as found
REDDER_THAN_BLUE = 0.1  # pixels redder than blue by more than this (white-balanced) are never nucleus
MIN_REFINE_PIXELS = 20
REFINE_GAP = 0.1  # score gap between nucleus and dark granular cytoplasm that justifies splitting them
MIN_LOBE_SHARE = 0.05  # smallest lobe kept, relative to the main one
MAX_NUCLEUS_FRACTION = 0.95  # a nucleus spanning the whole frame is not a located nucleus
# The cut square is at most the crop's own side (larger would shrink the cell inside a frame of padding).
MIN_SIDE_FRACTION = 0.25
BACKGROUND_SHARE = 0.25  # the brightest quarter of a crop's pixels gives its background colour
FOCUS_FACTOR = 2  # the crop is cut at twice its size, its focus measured, then halved
# Below this focus measure a crop is out of focus: 1-2% of the training crops as they are, a third of
# PBC crops blurred with a sigma of 1.2% of their side (chosen on training crops, not the held-out ones).
MIN_FOCUS = 0.06
OK, NO_NUCLEUS, OUT_OF_FOCUS = "ok", "nucleus not found", "out of focus"
WHITE_PERCENTILE = 97.0
REDUCING_GAP = 1.5  # PIL downscales by whole factors first when shrinking more than this: much faster
# A normalised crop shows a cell when at least this fraction of its pixels absorbs (optical density of its
# darkest channel) more than VISIBLE_OD; background, glare and noise stay below.
VISIBLE_OD = 0.25
MIN_STAINED_FRACTION = 0.02
CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, scipy's default for labels


@dataclass(frozen=True)
class CropFrame:
    """The square of a single-cell crop that the classifier sees.

    Attributes:
        centre_y: Centre of the square, rows of the crop.
        centre_x: Centre of the square, columns of the crop.
        side: Side of the square, pixels of the crop.
        quality: :data:`OK` when the nucleus set the square, :data:`NO_NUCLEUS` when the crop's own
            frame was used instead.
        gain: Per-channel white-balance gains of the crop.
        background: The crop's background colour (before the gains), for where the square leaves it.

    """

    centre_y: float
    centre_x: float
    side: float
    quality: str
    gain: np.ndarray
    background: np.ndarray


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
    """Multiply each channel by its gain, saturating at 255 (a table of the 256 products per channel)."""
    tables = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain, 0, 255).astype(np.uint8)
    balanced = np.empty_like(rgb)
    for channel in range(3):
        np.take(tables[:, channel], rgb[..., channel], out=balanced[..., channel])
    return balanced


@dataclass(frozen=True)
class NucleusBox:
    """Where the nucleus of a single-cell image lies, and whether it was found with confidence.

    Attributes:
        centre_y: Box centre, rows (pixels of the image it was found in).
        centre_x: Box centre, columns.
        extent: Longer side of the box (all lobes of the nucleus together).
        found: False when no nucleus stands out from the cytoplasm and red cells; the box is then the
            whole image.

    """

    centre_y: float
    centre_x: float
    extent: float
    found: bool


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    """How nucleus-like each pixel is under Romanowsky stains: dark in green, bluer than green.

    Args:
        rgb: (Y, X, 3) white-balanced uint8 image.

    Returns:
        A float32 (Y, X) score, higher for nuclei.

    """
    return _score(rgb.astype(np.float32) / 255.0)


def _score(values: np.ndarray) -> np.ndarray:
    """:func:`nucleus_score` of RGB values in 0..1."""
    green, blue = values[..., 1], values[..., 2]
    return (blue - green) + 0.5 * (1.0 - green)


def locate_nucleus(rgb: np.ndarray) -> NucleusBox:
    """Find the nucleus nearest the centre of a small white-balanced single-cell image.

    The nucleus score splits the pixels into three classes (background, cytoplasm and red cells,
    nucleus). Pixels redder than blue are never nucleus, so dark or purple red cells cannot join it.
    Within the darkest class a second split separates the nucleus from dark granular cytoplasm when the
    two differ clearly. The component nearest the centre (weighted by size) is the nucleus, together with
    the other lobes that lie in the same cell.

    Args:
        rgb: (Y, X, 3) white-balanced uint8 image, ideally about :data:`LOCATE_SIZE` pixels wide.

    Returns:
        The nucleus box in pixels of ``rgb``; the whole frame, with ``found=False``, when no nucleus
        stands out or it fills the frame.

    """
    values = rgb.astype(np.float32) / 255.0
    score = _score(values)
    not_found = NucleusBox(rgb.shape[0] / 2, rgb.shape[1] / 2, float(max(rgb.shape[:2])), False)
    if float(score.max() - score.min()) < MIN_NUCLEUS_CONTRAST:
        return not_found
    background_level, nucleus_level = _three_class_thresholds(score)
    nuclear = (score > nucleus_level) & (values[..., 2] - values[..., 0] > -REDDER_THAN_BLUE)
    nuclear = _refine_dark_class(_binary_opening(nuclear), score)
    labels, count = ndimage.label(nuclear, CROSS)
    if count == 0 or score[nuclear].mean() - score[score <= background_level].mean() < MIN_NUCLEUS_CONTRAST:
        return not_found
    best, lobes = _nucleus_lobes(labels, count, score > background_level)
    rows, cols = np.nonzero(_members(labels, count, lobes))
    extent = float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
    if extent >= MAX_NUCLEUS_FRACTION * max(rgb.shape[:2]):
        return not_found
    return NucleusBox((rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2, extent, True)


def _three_class_thresholds(score: np.ndarray) -> tuple[float, float]:
    """The two thresholds of a three-class Otsu split of the score (scikit-image)."""
    from skimage.filters import threshold_multiotsu

    low, high = threshold_multiotsu(score, classes=3, nbins=NBINS)
    return float(low), float(high)


def _refine_dark_class(nuclear: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Keep the darker half of the dark class when it stands clearly apart (granular cytoplasm)."""
    if nuclear.sum() < MIN_REFINE_PIXELS:
        return nuclear
    from skimage.filters import threshold_otsu

    darker = nuclear & (score > threshold_otsu(score[nuclear], nbins=NBINS))
    if score[darker].mean() - score[nuclear & ~darker].mean() <= REFINE_GAP:
        return nuclear
    refined = _binary_opening(darker)
    return refined if refined.any() else nuclear


def _nucleus_lobes(labels: np.ndarray, count: int, stained: np.ndarray) -> tuple[int, list[int]]:
    """The component nearest the centre (weighted by area) and every lobe lying in the same cell."""
    index = np.arange(1, count + 1)
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=count + 1)[1:].astype(np.float64)
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    centres = np.stack(
        [np.bincount(flat, weights=grid.ravel(), minlength=count + 1)[1:] / areas for grid in (rows, cols)],
        axis=1,
    )
    offset = np.hypot(centres[:, 0] - labels.shape[0] / 2, centres[:, 1] - labels.shape[1] / 2)
    best = int(np.argmax(areas / (1.0 + (offset / max(labels.shape) / 0.2) ** 2)))
    cells, _ = ndimage.label(_fill_holes(_binary_opening(stained) | (labels > 0)), CROSS)
    own_cell = cells[labels == best + 1][0]
    in_own_cell = (cells == own_cell).ravel().astype(np.float64)
    share_in_cell = np.bincount(flat, weights=in_own_cell, minlength=count + 1)[1:] / areas
    lobes = index[(share_in_cell > 0.5) & (areas >= MIN_LOBE_SHARE * areas[best])]
    return best + 1, [*lobes.tolist(), best + 1]


def _binary_opening(mask: np.ndarray) -> np.ndarray:
    """Binary opening by the 4-connected cross, pixels outside the image off (scipy's default), in numpy.

    scipy's general morphology costs a tenth of a millisecond per call on a thumbnail; it ran seven times
    per crop.
    """
    return _dilate_cross(_erode_cross(mask))


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    eroded = mask.copy()
    eroded[1:] &= mask[:-1]
    eroded[:-1] &= mask[1:]
    eroded[:, 1:] &= mask[:, :-1]
    eroded[:, :-1] &= mask[:, 1:]
    eroded[[0, -1]] = False
    eroded[:, [0, -1]] = False
    return eroded


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    dilated = mask.copy()
    dilated[1:] |= mask[:-1]
    dilated[:-1] |= mask[1:]
    dilated[:, 1:] |= mask[:, :-1]
    dilated[:, :-1] |= mask[:, 1:]
    return dilated


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region of background not 4-connected to the image border filled."""
    background, count = ndimage.label(~mask, CROSS)
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    return mask | ~_members(background, count, border)


def _members(labels: np.ndarray, count: int, chosen) -> np.ndarray:
    """Where ``labels`` (0..count) is one of ``chosen``: ``np.isin`` through a table of the labels."""
    table = np.zeros(count + 1, dtype=bool)
    table[chosen] = True
    return table[labels]


def frame_crop(rgb: np.ndarray, context: float = CONTEXT) -> CropFrame:
    """Decide the square of a single-cell crop that the classifier sees, and how sure that is.

    Args:
        rgb: (Y, X, 3) uint8 RGB crop with one white cell roughly centred.
        context: Side of the square relative to the nucleus extent.

    Returns:
        The square (``quality`` says whether the nucleus set its scale), with the crop's white-balance
        gains and background colour.

    """
    image = Image.fromarray(rgb)
    scale = LOCATE_SIZE / max(image.size)
    thumbnail = np.asarray(
        image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.BILINEAR,
            reducing_gap=REDUCING_GAP,
        )
    )
    gain = white_gain(thumbnail)
    background = background_colour(thumbnail)
    nucleus = locate_nucleus(apply_gain(thumbnail, gain))
    if not nucleus.found:
        side = float(max(image.size))
        return CropFrame(image.height / 2, image.width / 2, side, NO_NUCLEUS, gain, background)
    side = max(nucleus.extent / scale * context, MIN_SIDE_FRACTION * min(image.size), 8.0)
    side = min(side, max(image.size))
    centre_y = _inside(nucleus.centre_y / scale, side, image.height)
    centre_x = _inside(nucleus.centre_x / scale, side, image.width)
    return CropFrame(centre_y, centre_x, side, OK, gain, background)


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """A crop's background colour: the median of its brightest :data:`BACKGROUND_SHARE` of pixels.

    Brightness is the sum of the channels; the pixels at or above its ``1 - BACKGROUND_SHARE`` quantile
    (linear interpolation, as ``np.quantile``) are kept, and each channel's median taken, both from
    histograms of the integer values (the values ``np.quantile`` and ``np.median`` give, without sorting).
    """
    channels = [rgb[..., channel].ravel() for channel in range(3)]
    brightness = channels[0].astype(np.int32) + channels[1] + channels[2]
    cumulative = np.cumsum(np.bincount(brightness, minlength=3 * 256))
    position = (1 - BACKGROUND_SHARE) * (len(brightness) - 1)
    below, above = (int(np.searchsorted(cumulative, index, side="right"))
                    for index in (np.floor(position), np.ceil(position)))
    # brightness is an integer: at or above a quantile strictly between two neighbours means at or above
    # the upper one
    kept = brightness >= (above if position % 1 and above != below else below)
    return np.array([_median_of_bytes(values[kept]) for values in channels])


def _median_of_bytes(values: np.ndarray) -> float:
    """``np.median`` of uint8 values, from their histogram."""
    cumulative = np.cumsum(np.bincount(values, minlength=256))
    middle = len(values) // 2
    upper = int(np.searchsorted(cumulative, middle, side="right"))
    if len(values) % 2:
        return float(upper)
    return (int(np.searchsorted(cumulative, middle - 1, side="right")) + upper) / 2


def _inside(centre: float, side: float, length: int) -> float:
    """Move a square's centre so that the square stays within ``length`` where it fits."""
    if side >= length:
        return length / 2
    return min(max(centre, side / 2), length - side / 2)


def normalise_crop_checked(
    rgb: np.ndarray, size: int = CROP_SIZE, context: float = CONTEXT
) -> tuple[np.ndarray, str]:
    """White-balance a single-cell crop, cut the square around its nucleus, and check the result.

    Args:
        rgb: (Y, X, 3) uint8 RGB crop with one white cell roughly centred.
        size: Side of the returned square, in pixels.
        context: Side of the cut square relative to the nucleus extent.

    Returns:
        A (size, size, 3) uint8 image (where the square leaves the crop it is filled with the crop's
        background colour) and its quality: :data:`OK`, :data:`NO_NUCLEUS` (the crop's own scale was
        used) or :data:`OUT_OF_FOCUS`.

    """
    frame = frame_crop(rgb, context)
    half = frame.side / 2
    box = (frame.centre_x - half, frame.centre_y - half, frame.centre_x + half, frame.centre_y + half)
    square = _cut_square(Image.fromarray(rgb), box, FOCUS_FACTOR * size, frame.background)
    fine = apply_gain(square, frame.gain)
    quality = frame.quality
    if quality == OK and focus_measure(fine) < MIN_FOCUS:
        quality = OUT_OF_FOCUS
    return _block_mean(fine, FOCUS_FACTOR), quality


def normalise_crop(rgb: np.ndarray, size: int = CROP_SIZE, context: float = CONTEXT) -> np.ndarray:
    """The normalised crop of :func:`normalise_crop_checked`, without its quality."""
    return normalise_crop_checked(rgb, size, context)[0]


def focus_measure(rgb: np.ndarray) -> float:
    """Sharpness of a normalised crop: the steepest edges relative to its contrast (about 0.5 when sharp).

    Args:
        rgb: (Y, X, 3) white-balanced uint8 image.

    Returns:
        The 99th percentile of the green channel's gradient magnitude (per pixel) divided by the
        spread between its 2nd and 98th percentiles; 0 for a flat image.

    """
    low, high = np.percentile(rgb[..., 1], (2, 98))  # of the bytes: faster than of floats, the same values
    if high - low < 1.0:
        return 0.0
    rows, cols = np.gradient(rgb[..., 1].astype(np.float32))
    return float(np.percentile(np.hypot(rows, cols), 99) / (high - low))


def _block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by ``factor`` with block means (rounded half to even)."""
    height, width = rgb.shape[0] // factor, rgb.shape[1] // factor
    kept = rgb[: height * factor, : width * factor].astype(np.uint32)
    rows = sum(kept[offset::factor] for offset in range(factor))
    sums = sum(rows[:, offset::factor] for offset in range(factor))
    return np.rint(sums / factor**2).astype(np.uint8)


def _cut_square(
    image: Image.Image, box: tuple[float, float, float, float], size: int, background: np.ndarray
) -> np.ndarray:
    """Resize the square ``box`` of ``image`` to ``size`` pixels; outside the image, its background colour."""
    scale = size / (box[2] - box[0])
    inside = (max(box[0], 0), max(box[1], 0), min(box[2], image.width), min(box[3], image.height))
    width = min(size, max(1, round((inside[2] - inside[0]) * scale)))
    height = min(size, max(1, round((inside[3] - inside[1]) * scale)))
    part = np.asarray(
        image.resize((width, height), Image.BILINEAR, box=inside, reducing_gap=REDUCING_GAP)
    )
    left = min(size - width, max(0, round((inside[0] - box[0]) * scale)))
    top = min(size - height, max(0, round((inside[1] - box[1]) * scale)))
    square = np.empty((size, size, 3), dtype=np.uint8)
    square[...] = background.astype(np.uint8)
    square[top : top + height, left : left + width] = part
    return square
