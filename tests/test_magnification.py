"""Pixel size: the user's, the file's, the red cells', the default; segmentation at any magnification."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hematology.core.cells.magnification import (
    DEFAULT,
    METADATA,
    RULER,
    USER,
    check_pixel_size,
    find_pixel_size,
    pixel_size_from_scale,
    red_cell_diameter,
)
from napari_hematology.core.cells.segmentation import SegmentationConfig, resize_rgb, segment_field
from napari_hematology.core.errors import InputError

REFERENCE = SegmentationConfig().pixel_size_um


def red_cell_field(diameter: float, shape=(600, 800), count: int = 60, seed: int = 0) -> np.ndarray:
    """A smear-like field: pink discs of one size (some touching), pale centres, bright background."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), (228, 226, 215), dtype=np.float32)
    radius = int(np.ceil(diameter / 2))
    for _ in range(count):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        y0, x0 = max(0, int(cy) - radius), max(0, int(cx) - radius)
        yy, xx = np.mgrid[y0 : int(cy) + radius + 1, x0 : int(cx) + radius + 1]
        distance = np.hypot(yy - cy, xx - cx)
        window = image[y0 : y0 + distance.shape[0], x0 : x0 + distance.shape[1]]
        distance = distance[: window.shape[0], : window.shape[1]]
        window[distance < diameter / 2] = (205, 140, 150)
        window[distance < diameter / 6] = (215, 175, 180)
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def noise_field(shape=(300, 400)) -> np.ndarray:
    """Bare background: nothing stained to measure."""
    rng = np.random.default_rng(1)
    return np.clip(rng.normal(220, 3, (*shape, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("diameter", [16, 40, 110])
def test_ruler_measures_red_cells_of_any_size(diameter):
    measured = red_cell_diameter(red_cell_field(diameter, count=int(60 * (40 / diameter) ** 2) + 8), 1.0)
    assert measured == pytest.approx(diameter, rel=0.12)


def test_ruler_reads_large_lazy_images_in_windows():
    import dask.array as da

    field = red_cell_field(30, shape=(1000, 1000), count=250)
    slide = da.concatenate([da.from_array(field, chunks=500)] * 5, axis=1)  # 1000 x 5000, windows
    assert red_cell_diameter(slide, 1.0) == pytest.approx(30, rel=0.12)


def test_ruler_gives_up_without_red_cells():
    assert red_cell_diameter(noise_field()) is None


def test_pixel_size_comes_from_the_user_then_the_file_then_the_red_cells():
    field = red_cell_field(40)
    user = find_pixel_size(field, user_um=0.25, metadata_um=0.1)
    assert (user.source, user.um_per_px) == (USER, 0.25)
    metadata = find_pixel_size(field, metadata_um=0.1, metadata_source="Aperio MPP")
    assert (metadata.source, metadata.um_per_px) == (METADATA, 0.1) and "Aperio MPP" in metadata.note
    measured = find_pixel_size(field, name="f.jpg")
    assert measured.source == RULER and not measured.is_fallback
    assert measured.um_per_px == pytest.approx(7.5 / (40 * 1.1447), rel=0.12)
    assert "red cells" in measured.note and measured.note.startswith("f.jpg")


def test_implausible_file_metadata_is_ignored_with_a_note():
    found = find_pixel_size(red_cell_field(40), metadata_um=352.8, metadata_source="TIFF resolution tags")
    assert found.source == RULER
    assert "not plausible" in found.note


def test_no_red_cells_falls_back_to_the_default_and_says_so():
    found = find_pixel_size(noise_field(), name="empty.png")
    assert found.is_fallback and found.source == DEFAULT
    assert found.um_per_px == REFERENCE
    assert "no red cells" in found.note and "--pixel-size" in found.note


@pytest.mark.parametrize("value", [0.001, 0.0, 7.0, float("nan")])
def test_absurd_pixel_sizes_are_clear_errors(value):
    with pytest.raises(InputError, match="not plausible"):
        check_pixel_size(value, "--pixel-size")
    with pytest.raises(InputError, match="not plausible"):
        find_pixel_size(noise_field(), user_um=value)


def test_scale_gives_the_pixel_size_relative_to_the_reference():
    assert pixel_size_from_scale(2.0) == pytest.approx(REFERENCE / 2)
    with pytest.raises(InputError, match="Scale factor"):
        pixel_size_from_scale(0)


@pytest.mark.parametrize("resize", [0.5, 2.0])
def test_resized_field_gives_the_same_cells_at_its_own_pixel_size(sample_field, resize):
    reference = segment_field(sample_field)
    resized = resize_rgb(sample_field, resize)
    found = find_pixel_size(resized)
    assert found.source == RULER
    assert found.um_per_px == pytest.approx(REFERENCE / resize, rel=0.3)
    result = segment_field(resized, pixel_size_um=REFERENCE / resize)
    assert result.labels.shape == resized.shape[:2]
    assert len(result.cells) == len(reference.cells)
    np.testing.assert_allclose(
        result.cells["centroid_x"] / resize, reference.cells["centroid_x"], atol=6
    )
    assert set(np.unique(result.labels)) == {0, *result.cells["cell_id"]}
    np.testing.assert_allclose(result.cells["area"] / resize**2, reference.cells["area"], rtol=0.1)


def test_at_its_own_pixel_size_the_field_is_not_resampled(sample_field):
    near = segment_field(sample_field, pixel_size_um=REFERENCE * 1.03)
    exact = segment_field(sample_field)
    np.testing.assert_array_equal(near.labels, exact.labels)


def test_bccd_val_fields_at_half_and_double_magnification(shared_data):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_segmentation import evaluate_bccd

    for resize in (0.5, 2.0):
        figures = evaluate_bccd("val", SegmentationConfig(), 30, resize=resize, measure_pixel_size=True)
        assert figures["detection_f1_iou50"] >= 0.93, resize
        assert figures["pixel_size_estimate"]["median_abs_error"] <= 0.15, resize
