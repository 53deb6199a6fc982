"""A stain-and-camera shift suite: what crops and fields from labs the project has never seen look like.

Each shift changes a crop the way another lab's stain, scanner or camera would: the two stains of a
Romanowsky smear (a haematoxylin-like purple and an eosin-like pink, see
:mod:`~napari_hematology.core.cells.stain`) made stronger, weaker or bluer; the background tinted yellow
or grey; the optics blurred; the file compressed; the resolution lost; the cell drawn larger or smaller.
The spans come from measured differences between labs (docs/cell_classifier.md: another hospital's red
cells are about 1.5 times as dense in optical density and bluer than PBC's, its nuclei about 0.85 times).

The suite serves two purposes: benchmarks measure the normaliser and the classifier on it
(``benchmarks/bench_front_end.py``), and training draws random shifts from the same families
(:func:`random_shift`) so the classifier learns to ignore them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from napari_hematology.core.cells.crops import background_colour
from napari_hematology.core.cells.stain import REFERENCE_STAINS, estimate_stains, od_tables, stained_od

WHITE_PERCENTILE = 98.0


@dataclass(frozen=True)
class Shift:
    """One named change of a crop.

    Attributes:
        name: Short name used in benchmark tables.
        family: ``stain``, ``background``, ``optics`` or ``scale``.
        apply: Function from an RGB uint8 crop to the shifted crop.

    """

    name: str
    family: str
    apply: Callable[[np.ndarray], np.ndarray]


def restain(
    rgb: np.ndarray, purple: float = 1.0, pink: float = 1.0, pink_hue: float = 0.0
) -> np.ndarray:
    """Change the amounts of the two stains of a crop, and tilt the pink stain towards blue.

    Args:
        rgb: (Y, X, 3) uint8 image.
        purple: Factor on the haematoxylin-like (nuclear) stain.
        pink: Factor on the eosin-like (red-cell) stain.
        pink_hue: How far (0-1) the pink stain's colour moves towards the purple one's.

    Returns:
        The restained uint8 image; its background is unchanged.

    """
    white = np.percentile(rgb.reshape(-1, 3), WHITE_PERCENTILE, axis=0).clip(32, 255)
    tables = od_tables(white)
    stains = estimate_stains(stained_od(rgb, tables))
    stains = REFERENCE_STAINS if stains is None else stains
    od = np.stack([tables[channel][rgb[..., channel]] for channel in range(3)], axis=-1)
    amounts = od.reshape(-1, 3) @ np.linalg.pinv(stains)
    residual = od.reshape(-1, 3) - amounts @ stains
    new_pink = (1 - pink_hue) * stains[1] + pink_hue * stains[0]
    new_stains = np.stack([stains[0], new_pink / np.linalg.norm(new_pink) * np.linalg.norm(stains[1])])
    new_od = (amounts * [purple, pink]) @ new_stains + residual
    intensity = white * np.exp(-np.maximum(new_od, 0.0))
    return np.clip(intensity.reshape(rgb.shape) + 0.5, 0, 255).astype(np.uint8)


def tint(rgb: np.ndarray, illuminant: tuple[float, float, float]) -> np.ndarray:
    """Multiply each channel by the illuminant (a yellow lamp, a grey camera)."""
    return np.clip(rgb.astype(np.float32) * np.asarray(illuminant, np.float32) + 0.5, 0, 255).astype(np.uint8)


def blur(rgb: np.ndarray, sigma_fraction: float) -> np.ndarray:
    """Gaussian blur with a sigma that is a fraction of the crop's side (defocus)."""
    radius = sigma_fraction * max(rgb.shape[:2])
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Compress to JPEG at ``quality`` and decode again."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def lose_resolution(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by ``factor`` and enlarge back (a lower-resolution camera)."""
    image = Image.fromarray(rgb)
    reduced = (max(8, round(image.width / factor)), max(8, round(image.height / factor)))
    small = image.resize(reduced, Image.BOX)
    return np.asarray(small.resize(image.size, Image.BILINEAR))


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Draw the cell ``factor`` times larger in a frame of the same size (another magnification).

    Enlarging cuts the centre out; shrinking surrounds the crop with its own background colour.
    """
    height, width = rgb.shape[:2]
    image = Image.fromarray(rgb).resize((round(width * factor), round(height * factor)), Image.BILINEAR)
    scaled = np.asarray(image)
    if factor >= 1:
        top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
        return scaled[top : top + height, left : left + width]
    framed = np.empty_like(rgb)
    framed[...] = background_colour(rgb).astype(np.uint8)
    top, left = (height - scaled.shape[0]) // 2, (width - scaled.shape[1]) // 2
    framed[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return framed


def shift_suite() -> list[Shift]:
    """The named shifts that benchmarks report, spanning the differences measured between labs."""
    return [
        Shift("dark purple red cells", "stain", lambda rgb: restain(rgb, pink=1.5, pink_hue=0.25)),
        Shift("weak nuclear stain", "stain", lambda rgb: restain(rgb, purple=0.7)),
        Shift("strong nuclear stain", "stain", lambda rgb: restain(rgb, purple=1.3)),
        Shift("pale stains", "stain", lambda rgb: restain(rgb, purple=0.8, pink=0.6)),
        Shift("yellow background", "background", lambda rgb: tint(rgb, (1.0, 0.94, 0.72))),
        Shift("grey background", "background", lambda rgb: tint(rgb, (0.82, 0.84, 0.86))),
        Shift("blur", "optics", lambda rgb: blur(rgb, 0.006)),
        Shift("jpeg 25", "optics", lambda rgb: jpeg(rgb, 25)),
        Shift("resolution / 3", "optics", lambda rgb: lose_resolution(rgb, 3.0)),
        Shift("cell 0.7x", "scale", lambda rgb: rescale(rgb, 0.7)),
        Shift("cell 1.4x", "scale", lambda rgb: rescale(rgb, 1.4)),
    ]


def random_shift(rgb: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """One random draw from the suite's families, for training: stains always, the others sometimes.

    Args:
        rgb: (Y, X, 3) uint8 crop.
        generator: Random generator.

    Returns:
        The shifted crop, same size.

    """
    shifted = restain(
        rgb,
        purple=float(np.exp(generator.uniform(np.log(0.65), np.log(1.4)))),
        pink=float(np.exp(generator.uniform(np.log(0.55), np.log(1.7)))),
        pink_hue=float(generator.uniform(0.0, 0.35)),
    )
    if generator.random() < 0.4:
        low = generator.uniform(0.75, 1.0, size=3)
        shifted = tint(shifted, tuple(low / low.max()))
    if generator.random() < 0.25:
        shifted = blur(shifted, float(generator.uniform(0.002, 0.008)))
    if generator.random() < 0.25:
        shifted = lose_resolution(shifted, float(generator.uniform(1.5, 3.5)))
    if generator.random() < 0.25:
        shifted = jpeg(shifted, int(generator.integers(20, 70)))
    return shifted
