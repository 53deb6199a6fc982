"""Stain normalisation of Romanowsky-stained fields (Macenko-style), ahead of classical segmentation.

A field's colour is modelled as two stains in optical density (OD): a haematoxylin-like one (the purple of
nuclei, azure/methylene blue) and an eosin-like one (the pink of red cells and granules). Following
Macenko et al. (2009, "A method for normalizing histology slides for quantitative analysis"), the two stain
OD vectors are the extreme directions of the stained pixels' OD within the plane of their two main
principal axes; each pixel's two stain concentrations are then re-expressed with a fixed reference stain
matrix. The whole mapping is one 3 x 3 matrix on OD, applied to every
pixel through per-channel lookup tables.

Fields whose stains cannot be estimated (blank, tiny, few stained pixels, one stain only) are returned
unchanged: :func:`normalise_stain` gives None and the caller keeps the original pixels.
"""

from __future__ import annotations

import numpy as np

from napari_hematology.models.stains import REFERENCE_STAINS

# Pixels whose summed OD exceeds this are stained (background and glare are below).
STAINED_OD = 0.3
# Stains are estimated on a strided subsample of about this many pixels.
SAMPLE_PIXELS = 40_000
# Fewer stained pixels than this: no estimate.
MIN_STAINED_PIXELS = 400
# Percentile of the pixels' angle in the stain plane that gives each extreme stain direction.
ANGLE_PERCENTILE = 1.0
# Stain directions closer than this (radians) mean one stain only: no estimate.
MIN_STAIN_ANGLE = 0.05


def od_tables(white: np.ndarray) -> np.ndarray:
    """Lookup tables (3, 256) from 8-bit intensity to optical density relative to ``white``, per channel."""
    levels = np.arange(256, dtype=np.float32)[None, :]
    ratio = (levels + 1.0) / (np.asarray(white, dtype=np.float32)[:, None] + 1.0)
    return -np.log(np.clip(ratio, 1e-3, 1.0)).astype(np.float32)


def stained_od(rgb: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """OD (N, 3) of a strided subsample of the stained pixels of an RGB uint8 image."""
    stride = max(1, round(np.sqrt(rgb.shape[0] * rgb.shape[1] / SAMPLE_PIXELS)))
    pixels = rgb[::stride, ::stride, :3].reshape(-1, 3)
    od = np.stack([tables[channel][pixels[:, channel]] for channel in range(3)], axis=1)
    return od[od.sum(axis=1) > STAINED_OD]


def estimate_stains(od: np.ndarray) -> np.ndarray | None:
    """Macenko estimate of the two stain OD vectors from stained pixels' OD.

    Args:
        od: (N, 3) optical densities of stained pixels.

    Returns:
        (2, 3) unit OD vectors, haematoxylin-like first, or None when there are too few pixels or only one
        stain direction.

    """
    if len(od) < MIN_STAINED_PIXELS:
        return None
    _, eigenvectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = eigenvectors[:, [2, 1]]  # the two main axes
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    if not high - low >= MIN_STAIN_ANGLE:
        return None
    vectors = np.stack([plane @ [np.cos(a), np.sin(a)] for a in (low, high)])
    vectors *= np.where(vectors.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if vectors[0, 0] - vectors[0, 2] < vectors[1, 0] - vectors[1, 2]:
        vectors = vectors[::-1]  # haematoxylin-like absorbs more red than blue
    return vectors.astype(np.float32)


def normalise_stain(rgb: np.ndarray, white: np.ndarray) -> np.ndarray | None:
    """Re-express an RGB field in the reference stains (background white becomes 255).

    Each pixel's two stain concentrations are kept as they are (no rescaling to reference maxima, which
    was measured to hurt; see docs/blast_detection.md) and recomposed with :data:`REFERENCE_STAINS`.

    Args:
        rgb: (Y, X, 3) uint8 image.
        white: The image's background white point per channel.

    Returns:
        The normalised uint8 image, or None when the field's stains cannot be estimated.

    """
    tables = od_tables(white)
    vectors = estimate_stains(stained_od(rgb, tables))
    if vectors is None:
        return None
    transform = REFERENCE_STAINS.T @ np.linalg.pinv(vectors.T)  # (3, 3) on OD: field OD -> reference OD
    od = (transform[:, 0][None, :] * tables[0][:, None])[rgb[..., 0]]
    for channel in (1, 2):
        od += (transform[:, channel][None, :] * tables[channel][:, None])[rgb[..., channel]]
    np.maximum(od, 0.0, out=od)
    np.exp(-od, out=od)
    return (od * 255.0 + 0.5).astype(np.uint8)
