"""White-cell segmentation: outputs, real BCCD fields, tiles, lazy slides and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from blast_helpers import background_only

from napari_hematology.core.cells.segmentation import (
    CELL_COLUMNS,
    SegmentationConfig,
    segment_field,
    segment_image,
    tile_windows,
)
from napari_hematology.core.errors import Cancelled, InputError


def test_sample_field_gives_consistent_labels_and_table(sample_field):
    result = segment_image(sample_field)
    assert list(result.cells.columns) == CELL_COLUMNS
    assert len(result.cells) >= 1
    assert result.labels.shape == sample_field.shape[:2]
    assert set(np.unique(result.labels)) == {0, *result.cells["cell_id"]}
    for cell in result.cells.itertuples():
        mask = result.labels == cell.cell_id
        assert mask.sum() == cell.area
        assert (result.nuclei & mask).sum() == cell.nucleus_area
        assert 0 < cell.nucleus_area < cell.area
        assert cell.bbox_y0 <= cell.centroid_y < cell.bbox_y1
        assert cell.nc_ratio == pytest.approx(cell.nucleus_area / (cell.area - cell.nucleus_area))


def test_real_fields_match_annotated_white_cells(shared_data):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_segmentation import evaluate_bccd

    figures = evaluate_bccd("train", SegmentationConfig(), limit=12)
    assert figures["detection_f1_iou50"] >= 0.9
    assert figures["nucleus_dice"] >= 0.8
    assert figures["cell_dice"] >= 0.75


def test_field_without_white_cells_gives_empty_result():
    result = segment_image(background_only())
    assert result.cells.empty
    assert list(result.cells.columns) == CELL_COLUMNS
    assert not result.labels.any()


def test_16_bit_image_gives_the_same_cells(sample_field):
    eight = segment_image(sample_field)
    sixteen = segment_image(sample_field.astype(np.uint16) * 257)
    assert len(sixteen.cells) == len(eight.cells)
    np.testing.assert_allclose(sixteen.cells["centroid_x"], eight.cells["centroid_x"], atol=2)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((200, 200), 128, np.uint8), "grayscale"),
        (np.zeros((10, 10, 3), np.uint8), "at least"),
        (np.zeros((5, 200, 200, 3), np.uint8), "shape"),
        (np.full((100, 100, 3), 200, np.uint8), "blank"),
    ],
)
def test_bad_images_are_refused_with_a_clear_message(image, message):
    with pytest.raises(InputError, match=message):
        segment_image(image)


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="tile_overlap"):
        SegmentationConfig(tile_size=256, tile_overlap=200)


def test_tiles_cover_the_image_and_cores_do_not_overlap():
    shape = (1000, 1300)
    covered = np.zeros(shape, dtype=int)
    for rows, _cols, core_rows, core_cols in tile_windows(shape, 400, 100):
        assert rows.start <= core_rows.start and core_rows.stop <= rows.stop
        covered[core_rows, core_cols] += 1
    assert (covered == 1).all()


def test_tiled_segmentation_finds_the_same_cells(sample_field):
    whole = segment_field(sample_field)
    config = SegmentationConfig(tile_size=400, tile_overlap=150)
    tiled = segment_image(sample_field, config)  # 640 x 480 > 400**2: tiled
    assert len(tiled.cells) == len(whole.cells)
    pd.testing.assert_series_equal(
        tiled.cells["centroid_y"].round(-1), whole.cells["centroid_y"].round(-1), check_exact=False, atol=15
    )
    assert set(np.unique(tiled.labels)) == {0, *tiled.cells["cell_id"]}


def test_large_lazy_image_is_processed_tile_by_tile(sample_field):
    import dask.array as da

    field = da.from_array(sample_field, chunks=(240, 320, 3))
    slide = da.concatenate([da.concatenate([field] * 4, axis=1)] * 5, axis=0)  # 2400 x 2560
    single = len(segment_field(sample_field).cells)
    reports = []
    labels = np.zeros(slide.shape[:2], dtype=np.uint32)
    result = segment_image(slide, labels_out=labels, progress=lambda d, t, m="": reports.append((d, t)))
    assert reports[-1][0] == reports[-1][1] > 1
    assert abs(len(result.cells) - 20 * single) <= 4  # cells cut by field seams may split or vanish
    assert result.cells["cell_id"].is_unique
    assert labels.max() == result.cells["cell_id"].max()


def test_tiled_segmentation_can_be_cancelled(sample_field):
    config = SegmentationConfig(tile_size=256, tile_overlap=64)
    with pytest.raises(Cancelled):
        segment_image(sample_field, config, should_stop=lambda: True)


def _two_stain_field(stains: np.ndarray, white: float = 245.0) -> np.ndarray:
    """A 200 x 200 field: background, a disc of stain 0 inside a ring of stain 1, red-cell-like discs."""
    yy, xx = np.mgrid[:200, :200]
    concentrations = np.zeros((200, 200, 2), np.float32)
    radius = np.hypot(yy - 100, xx - 100)
    concentrations[..., 0] = 0.9 * (radius < 25)
    concentrations[..., 1] = 0.5 * ((radius >= 25) & (radius < 45)) + 0.4 * (np.hypot(yy - 30, xx - 30) < 20)
    concentrations += np.random.default_rng(0).uniform(0, 0.05, concentrations.shape)
    od = concentrations @ stains
    return np.clip(white * np.exp(-od), 0, 255).astype(np.uint8)


def test_stain_normalisation_maps_a_recoloured_field_onto_the_same_colours():
    from napari_hematology.core.cells.stain import REFERENCE_STAINS, normalise_stain, od_tables

    shifted = np.array([[0.75, 0.60, 0.28], [0.05, 0.80, 0.60]], np.float32)
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    reference, recoloured = _two_stain_field(REFERENCE_STAINS), _two_stain_field(shifted, white=230.0)

    def od(rgb, white):
        tables = od_tables(np.full(3, white, np.float32))
        return np.stack([tables[c][rgb[..., c]] for c in range(3)], axis=-1)

    before = np.abs(od(recoloured, 230.0) - od(reference, 245.0)).mean()
    after = np.abs(od(normalise_stain(recoloured, np.full(3, 230.0)), 255.0) - od(reference, 245.0)).mean()
    assert after < 0.25 * before
    assert after < 0.03


@pytest.mark.parametrize(
    "image",
    [
        np.full((120, 120, 3), 240, np.uint8),  # blank
        np.zeros((4, 4, 3), np.uint8),  # tiny
        np.pad(np.full((6, 6, 3), 90, np.uint8), ((57, 57), (57, 57), (0, 0)), constant_values=240),  # few
    ],
)
def test_stain_normalisation_falls_back_when_stains_cannot_be_estimated(image):
    from napari_hematology.core.cells.stain import normalise_stain

    assert normalise_stain(image, np.full(3, 240.0)) is None
    result = segment_field(image, SegmentationConfig(stain_normalisation=True))
    assert result.cells.empty


def test_stain_normalisation_switch_changes_the_segmentation_input(sample_field, monkeypatch):
    from napari_hematology.core.cells import segmentation

    seen = []

    def spy(rgb, white):
        seen.append(rgb)
        return np.full_like(rgb, 255)  # a blank field: nothing left to find

    monkeypatch.setattr(segmentation, "normalise_stain", spy)
    assert len(segment_field(sample_field).cells) >= 1
    assert not seen
    assert segment_field(sample_field, SegmentationConfig(stain_normalisation=True)).cells.empty
    assert len(seen) == 1 and seen[0].shape == sample_field.shape


def test_nearest_resize_takes_the_nearest_source_pixel():
    from napari_hematology.core.cells.segmentation import resize_nearest

    labels = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(resize_nearest(labels, (6, 8)), labels.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(resize_nearest(labels.repeat(2, 0).repeat(2, 1), (3, 4)), labels)
    assert resize_nearest(labels > 5, (5, 7)).dtype == bool
