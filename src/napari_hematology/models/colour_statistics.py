"""Stain colour statistics of single-cell crops, computed in torch for whole batches.

Under Romanowsky stains much of what tells cell types apart is colour: the purple of the nucleus and how
fine its chromatin looks at low magnification, the blue of a blast's scant cytoplasm, the granules of
eosinophils and basophils, and how much of the frame is nucleus. A small network trained from scratch
on a few hundred crops learns these slowly and unreliably; these fixed statistics give them to it
directly. They are CIE Lab means and spreads over the whole crop, the nucleus and the rest, the
nucleus fraction, and Lab histograms of the whole crop and of the nucleus.
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional

STATISTICS_SIDE = 32
HISTOGRAM_BINS = 8
LAB_RANGES = ((0.0, 100.0), (-40.0, 60.0), (-60.0, 40.0))
OTSU_BINS = 32
SRGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
D65_WHITE = (0.95047, 1.0, 1.08883)
STATISTICS_SIZE = 3 * 3 * 2 + 1 + 2 * 3 * HISTOGRAM_BINS


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB values in 0..1 to CIE Lab (D65).

    Args:
        rgb: (n, 3, h, w) tensor.

    Returns:
        (n, 3, h, w) tensor of L (0..100), a and b.

    """
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", rgb.new_tensor(SRGB_TO_XYZ), linear)
    xyz = xyz / rgb.new_tensor(D65_WHITE).view(1, 3, 1, 1)
    cube_root = torch.where(xyz > 0.008856, xyz.clamp_min(1e-6) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = 116 * cube_root[:, 1] - 16
    green_red = 500 * (cube_root[:, 0] - cube_root[:, 1])
    blue_yellow = 200 * (cube_root[:, 1] - cube_root[:, 2])
    return torch.stack([lightness, green_red, blue_yellow], 1)


def otsu_masks(scores: torch.Tensor, bins: int = OTSU_BINS) -> torch.Tensor:
    """Per-row Otsu threshold of an (n, p) score matrix; returns the (n, p) mask above it."""
    low = scores.min(1, keepdim=True).values
    high = scores.max(1, keepdim=True).values
    span = (high - low).clamp_min(1e-6)
    index = ((scores - low) / span * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(scores.shape[0], bins, device=scores.device).scatter_add_(
        1, index, torch.ones_like(scores)
    )
    centres = (torch.arange(bins, device=scores.device) + 0.5) / bins
    weight_below = counts.cumsum(1)[:, :-1]
    weight_above = scores.shape[1] - weight_below
    sum_below = (counts * centres).cumsum(1)[:, :-1]
    total = (counts * centres).sum(1, keepdim=True)
    mean_below = sum_below / weight_below.clamp_min(1)
    mean_above = (total - sum_below) / weight_above.clamp_min(1)
    best = (weight_below * weight_above * (mean_below - mean_above) ** 2).argmax(1, keepdim=True)
    threshold = low + span * (best.float() + 1) / bins
    return scores > threshold


def soft_histograms(values: torch.Tensor, weights: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Weighted histograms with linear interpolation between bins, normalised to sum to 1.

    Args:
        values: (n, p) values.
        weights: (n, p) non-negative weights.
        low: Lower end of the range.
        high: Upper end of the range.

    Returns:
        (n, HISTOGRAM_BINS) tensor.

    """
    position = ((values - low) / (high - low) * HISTOGRAM_BINS - 0.5).clamp(0, HISTOGRAM_BINS - 1)
    left = position.floor().long()
    right = (left + 1).clamp(max=HISTOGRAM_BINS - 1)
    fraction = position - left
    histogram = torch.zeros(values.shape[0], HISTOGRAM_BINS, device=values.device)
    histogram.scatter_add_(1, left, weights * (1 - fraction))
    histogram.scatter_add_(1, right, weights * fraction)
    return histogram / histogram.sum(1, keepdim=True).clamp_min(1e-6)


def colour_statistics(images: torch.Tensor) -> torch.Tensor:
    """Stain colour statistics of a batch of crops.

    Args:
        images: (n, 3, h, w) RGB values in 0..255 (uint8 or float).

    Returns:
        (n, STATISTICS_SIZE) float tensor, each statistic roughly in -3..3.

    """
    rgb = images.float() / 255.0
    if max(rgb.shape[-2:]) > STATISTICS_SIDE:
        rgb = functional.adaptive_avg_pool2d(rgb, STATISTICS_SIDE)
    count = rgb.shape[0]
    lab = rgb_to_lab(rgb).reshape(count, 3, -1)
    nucleus = otsu_masks((rgb[:, 2] - rgb[:, 1]).reshape(count, -1)).float()
    statistics = []
    for weights in (torch.ones_like(nucleus), nucleus, 1 - nucleus):
        total = weights.sum(1, keepdim=True).clamp_min(1)
        mean = (lab * weights[:, None]).sum(2) / total
        spread = (((lab - mean[..., None]) ** 2 * weights[:, None]).sum(2) / total).sqrt()
        statistics += [mean / 50, spread / 20]
    statistics.append(nucleus.mean(1, keepdim=True))
    everywhere = torch.ones_like(nucleus)
    for channel, (low, high) in enumerate(LAB_RANGES):
        statistics.append(soft_histograms(lab[:, channel], everywhere, low, high))
        statistics.append(soft_histograms(lab[:, channel], nucleus, low, high))
    return torch.cat(statistics, 1)
