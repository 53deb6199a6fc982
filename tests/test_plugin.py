"""The npe2 contributions inside napari: manifest, reader, writers, sample data, screenshot."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_hematology.core.errors import InputError
from napari_hematology.plugin.reader import get_reader
from napari_hematology.plugin.writer import write_features_csv, write_labels_tiff

pytestmark = pytest.mark.gui


def test_manifest_is_valid_and_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-hematology")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} >= {"Blast detection"}


def test_get_reader_declines_other_files(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    assert get_reader(str(tmp_path / "table.csv")) is None
    assert get_reader(str(tmp_path / "missing.png")) is None


def test_sample_data_opens_in_viewer_and_screenshot(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-hematology", "smear_field")
    assert viewer.layers[0].rgb
    assert viewer.layers[0].data.shape == (480, 640, 3)
    screenshot = viewer.screenshot(canvas_only=True, flash=False)
    assert screenshot.ndim == 3 and screenshot.shape[-1] == 4
    assert screenshot[..., :3].std() > 5  # the smear is drawn, not a blank canvas


def test_single_cells_sample_is_a_named_grid_without_overlap(make_napari_viewer):
    from napari_hematology.core.cells.samples import sample_cells
    from napari_hematology.core.io import read_image

    viewer = make_napari_viewer()
    viewer.open_sample("napari-hematology", "single_cells")
    grid, frames = viewer.layers
    assert grid.rgb and frames.nshapes == len(sample_cells()) == 5
    assert list(frames.features["cell_type"]) == [path.stem.split("_")[0] for path in sample_cells()]
    boxes = [(corners.min(axis=0).astype(int), corners.max(axis=0).astype(int)) for corners in frames.data]
    for (low, high), path in zip(boxes, sample_cells(), strict=True):
        crop = np.asarray(read_image(path).data)[..., :3]
        np.testing.assert_array_equal(grid.data[low[0] : high[0], low[1] : high[1]], crop)
    covered = np.zeros(grid.data.shape[:2], int)
    for low, high in boxes:
        covered[low[0] : high[0], low[1] : high[1]] += 1
    assert covered.max() == 1  # no crop lies on another


def test_the_two_samples_open_side_by_side_not_on_each_other(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-hematology", "smear_field")
    viewer.open_sample("napari-hematology", "single_cells")
    field, grid, frames = viewer.layers
    field_right = field.extent.world[1][-1]
    assert grid.extent.world[0][-1] > field_right, "the single cells start right of the field"
    assert frames.extent.world[0][-1] > field_right
    assert np.allclose(grid.translate, frames.translate), "the frames stay on their crops"


def test_viewer_opens_pyramidal_tiff_as_multiscale(make_napari_viewer, tmp_path, sample_field):
    path = tmp_path / "slide.ome.tif"
    base = np.tile(sample_field, (2, 2, 1))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(base, subifds=1, tile=(256, 256), photometric="rgb")
        tif.write(base[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-hematology")
    assert viewer.layers[0].multiscale
    assert viewer.layers[0].data[0].shape == base.shape


def test_corrupt_file_gives_clear_error_and_viewer_stays_usable(make_napari_viewer, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="corrupt, truncated"):
        viewer.open(str(broken), plugin="napari-hematology")
    viewer.add_image(np.zeros((8, 8)))
    assert len(viewer.layers) == 1


def test_writers_round_trip_labels_and_features(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((30, 30), np.int32)
    labels[2:8, 2:8] = 1
    labels[10:20, 10:20] = 2
    features = pd.DataFrame({"cell_id": [1, 2], "blast_probability": [0.2, 0.8]})
    layer = viewer.add_labels(labels, name="cells", features=features)
    tif_path = tmp_path / "cells.tif"
    csv_path = tmp_path / "cells.csv"
    layer.save(str(tif_path), plugin="napari-hematology")
    layer.save(str(csv_path), plugin="napari-hematology")
    np.testing.assert_array_equal(tifffile.imread(tif_path), labels)
    assert pd.read_csv(csv_path)["blast_probability"].tolist() == [0.2, 0.8]


def test_features_writer_refuses_layer_without_table(tmp_path):
    with pytest.raises(InputError, match="no per-cell table"):
        write_features_csv(str(tmp_path / "x.csv"), None, {"name": "cells", "features": pd.DataFrame()})
    assert write_labels_tiff(str(tmp_path / "x.tif"), np.ones((4, 4), np.uint8), {})
