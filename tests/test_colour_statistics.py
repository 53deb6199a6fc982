"""Stain colour statistics: Lab conversion, nucleus masks and histograms on generated crops."""

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from napari_hematology.models.colour_statistics import (
    HISTOGRAM_BINS,
    STATISTICS_SIZE,
    colour_statistics,
    otsu_masks,
    rgb_to_lab,
    soft_histograms,
)

WHITE, BLACK, PURPLE = (255, 255, 255), (0, 0, 0), (110, 60, 160)


def synthetic_cell(nucleus_radius: int, side: int = 64) -> torch.Tensor:
    """A (1, 3, side, side) uint8 crop: a purple disc on a pale pink background."""
    rows, cols = np.indices((side, side))
    disc = np.hypot(rows - side / 2, cols - side / 2) < nucleus_radius
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = (235, 200, 205)
    image[disc] = PURPLE
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def test_rgb_to_lab_matches_reference_white_black_and_a_colour():
    pixels = torch.tensor([WHITE, BLACK, PURPLE], dtype=torch.float32).T.reshape(1, 3, 1, 3) / 255
    lab = rgb_to_lab(pixels)[0, :, 0].T
    assert lab[0].tolist() == pytest.approx([100, 0, 0], abs=0.1)
    assert lab[1].tolist() == pytest.approx([0, 0, 0], abs=0.1)
    reference = rgb2lab(np.array([[PURPLE]], dtype=np.uint8))[0, 0]
    assert lab[2].tolist() == pytest.approx(reference.tolist(), abs=0.5)


def test_otsu_masks_split_each_row_on_its_own():
    scores = torch.tensor([[0.0, 0.1, 0.9, 1.0], [5.0, 5.1, 5.2, 9.0]])
    masks = otsu_masks(scores)
    assert masks.tolist() == [[False, False, True, True], [False, False, False, True]]


def test_soft_histograms_sum_to_one_and_put_mass_where_the_values_are():
    values = torch.tensor([[0.0, 0.0, 100.0], [50.0, 50.0, 50.0]])
    histograms = soft_histograms(values, torch.ones_like(values), 0.0, 100.0)
    assert histograms.shape == (2, HISTOGRAM_BINS)
    assert torch.allclose(histograms.sum(1), torch.ones(2))
    assert histograms[0, 0] == pytest.approx(2 / 3) and histograms[0, -1] == pytest.approx(1 / 3)
    assert histograms[1, HISTOGRAM_BINS // 2 - 1 : HISTOGRAM_BINS // 2 + 1].sum() == pytest.approx(1)


def test_colour_statistics_track_nucleus_size_at_any_crop_size():
    small, large = synthetic_cell(8), synthetic_cell(20)
    statistics = colour_statistics(torch.cat([small, large]))
    assert statistics.shape == (2, STATISTICS_SIZE)
    assert torch.isfinite(statistics).all()
    nucleus_fraction = statistics[:, 18]
    assert nucleus_fraction[0] == pytest.approx(np.pi * 8**2 / 64**2, rel=0.25)
    assert nucleus_fraction[1] > 4 * nucleus_fraction[0]
    resized = torch.nn.functional.interpolate(large.float(), size=128, mode="nearest")
    whole_crop_mean_and_nucleus_fraction = [0, 1, 2, 18]
    assert torch.allclose(
        colour_statistics(resized)[0, whole_crop_mean_and_nucleus_fraction],
        statistics[1, whole_crop_mean_and_nucleus_fraction],
        atol=0.02,
    )
