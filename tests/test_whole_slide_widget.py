"""The Whole slide dock: a slide opens multiscale, cells appear while the run goes on, cancel and resume."""

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from blast_helpers import FakeClassifier
from napari.utils.colormaps.standardize_color import transform_color
from slide_helpers import mosaic, synthetic_smear, write_ome_pyramid

from napari_hematology.core.cells.classes import CLASS_COLOURS
from napari_hematology.core.cells.segmentation import SegmentationConfig
from napari_hematology.core.whole_slide import analysis as whole_slide
from napari_hematology.core.whole_slide import worker as slide_worker
from napari_hematology.core.whole_slide.geojson import (
    geojson_to_cells,
    polygons_to_geojson,
    read_geojson,
    write_geojson,
)
from napari_hematology.widgets.whole_slide import FOUND, FOUND_COLOUR, WHOLE_SLIDE, WholeSlideWidget

pytestmark = pytest.mark.gui
TILED = SegmentationConfig(tile_size=1024, tile_overlap=256)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "smear.ome.tif"
    reference = SegmentationConfig().pixel_size_um
    return write_ome_pyramid(path, mosaic(1440, 1920), levels=3, pixel_size_um=reference)


@pytest.fixture(autouse=True)
def workers(monkeypatch):
    """Worker processes of the docks, with the fake classifier (pickled to them); closed after the test."""
    made = []

    def worker():
        made.append(slide_worker.SlideWorker(classifier=FakeClassifier(blast_above=200)))
        return made[-1]

    monkeypatch.setattr("napari_hematology.widgets.whole_slide.SlideWorker", worker)
    yield made
    for each in made:
        each.close()


@pytest.fixture
def dock(make_napari_viewer, slide_path, tmp_path, monkeypatch):
    small_tiles = partial(whole_slide.WholeSlideConfig, segmentation=TILED)  # several tiles on a small slide
    monkeypatch.setattr("napari_hematology.widgets.whole_slide.WholeSlideConfig", small_tiles)
    viewer = make_napari_viewer()
    viewer.open(str(slide_path), plugin="napari-hematology")
    widget = WholeSlideWidget(viewer)
    widget.form.out.value = tmp_path
    widget.form.regions.value = WHOLE_SLIDE
    return viewer, widget


def _run_to_end(widget, qtbot):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    qtbot.wait(50)


def test_slide_opens_as_a_multiscale_layer_with_its_pixel_size(dock, slide_path):
    viewer, widget = dock
    layer = viewer.layers[0]
    assert layer.multiscale and len(layer.data) == 3 and layer.rgb
    assert layer.metadata["pixel_size_um"] == pytest.approx(SegmentationConfig().pixel_size_um)
    assert layer.metadata["format"] == "OME-TIFF"
    assert widget.form.slide.value == layer.name


def test_cells_appear_tile_by_tile_with_class_colours_and_features(dock, qtbot, tmp_path):
    viewer, widget = dock
    counts = []
    widget._signals.tile_done.connect(lambda update: counts.append(update.summary["cells"]))
    widget.analyse()
    shown = lambda: widget.cells_layer is not None and len(widget.cells_layer.data) > 0  # noqa: E731
    qtbot.waitUntil(shown, timeout=30_000)
    _run_to_end(widget, qtbot)
    assert len(counts) > 3 and counts == sorted(counts)  # grew as tiles finished
    table = pd.read_csv(tmp_path / "smear_cells.csv")
    layer = widget.cells_layer
    assert len(layer.data) == len(table) == counts[-1]
    np.testing.assert_allclose(layer.data, table[["centroid_y", "centroid_x"]].to_numpy())
    assert list(layer.features["label"]) == list(table["label"])
    blast = np.flatnonzero(layer.features["label"].to_numpy() == "blast")[0]
    np.testing.assert_allclose(layer.face_color[blast, :3], np.array(CLASS_COLOURS["blast"]) / 255, atol=0.01)
    assert f"{len(table)} white cells" in widget.summary.text()
    assert widget.export_button.isEnabled() and not widget.resume_button.isEnabled()


def test_cells_found_before_the_classifier_loads_show_grey_until_classified(dock, qtbot):
    viewer, widget = dock
    found = pd.DataFrame({"centroid_y": [100.0, 300.0], "centroid_x": [200.0, 400.0], "area": [500.0, 700.0]})
    widget._signals.cells_found.emit(found)
    layer = widget.cells_layer
    assert len(layer.data) == 2 and set(layer.features["label"]) == {FOUND}
    np.testing.assert_allclose(layer.face_color[:, :3], transform_color(FOUND_COLOUR)[:, :3].repeat(2, 0))
    assert FOUND in widget.legend.colours
    classified = found.assign(label=["blast", "neutrophil"], cell_id=[1, 2], blast_probability=[0.9, 0.1])
    summary = whole_slide._summary(classified, list(FakeClassifier.classes))
    widget._signals.tile_done.emit(whole_slide.TileUpdate(classified, summary, 1, 4))
    labels = lambda: list(widget.cells_layer.features["label"])  # noqa: E731
    qtbot.waitUntil(lambda: labels() == ["blast", "neutrophil"], timeout=5000)
    assert len(widget.cells_layer.data) == 2 and FOUND not in widget.legend.colours


def test_the_worker_starts_on_analyse_and_the_run_begins_where_the_user_looks(dock, qtbot, workers):
    viewer, widget = dock
    assert widget.worker is None and not workers, "choosing a slide starts nothing"
    viewer.scene.camera.center = (1400.0, 1900.0)
    first = []
    widget._signals.tile_done.connect(lambda update: first.append(update))
    widget.analyse()
    assert widget.worker is workers[0]
    qtbot.waitUntil(lambda: widget.worker.pid is not None, timeout=30_000)
    assert widget.worker.pid != os.getpid()  # in its own process
    qtbot.waitUntil(lambda: bool(first), timeout=30_000)
    widget.runner.cancel()
    _run_to_end(widget, qtbot)
    cells = first[0].cells
    assert len(cells) and (cells["centroid_y"] >= 1024).all() and (cells["centroid_x"] >= 1536).all()


def test_cancel_keeps_the_cells_and_resume_finishes_the_run(dock, qtbot, tmp_path):
    viewer, widget = dock
    widget._signals.tile_done.connect(lambda update: widget.runner.cancel())  # on the first tile
    widget.analyse()
    _run_to_end(widget, qtbot)
    found = len(widget.cells_layer.data)
    checkpoint = json.loads((tmp_path / "smear_checkpoint.json").read_text())
    assert found > 0 and not checkpoint["complete"]
    assert len(checkpoint["done"]) < checkpoint["identity"]["tiles"]
    assert widget.resume_button.isEnabled()
    widget._signals.tile_done.disconnect()
    widget._signals.tile_done.connect(widget._queue_tile)
    widget.resume()
    _run_to_end(widget, qtbot)
    table = pd.read_csv(tmp_path / "smear_cells.csv")
    assert len(widget.cells_layer.data) == len(table) > found
    assert json.loads((tmp_path / "smear_checkpoint.json").read_text())["complete"]
    assert list(table["cell_id"]) == list(range(1, len(table) + 1))


def test_geojson_regions_limit_the_run_and_cells_round_trip(dock, qtbot, tmp_path):
    viewer, widget = dock
    left = np.array([[0.0, 0.0], [0.0, 900.0], [1440.0, 900.0], [1440.0, 0.0]])
    regions = write_geojson(tmp_path / "qupath.geojson", polygons_to_geojson([left], name="Tumor"))
    widget.import_geojson(regions)
    shapes = viewer.layers["qupath regions"]
    np.testing.assert_allclose(shapes.data[0], left)
    assert widget.form.regions.value == "qupath regions"
    widget.analyse()
    _run_to_end(widget, qtbot)
    assert len(widget.cells) and (widget.cells["centroid_x"] < 900).all()
    exported = widget.export_geojson(tmp_path / "cells.geojson")
    back = geojson_to_cells(read_geojson(exported))
    assert list(back["label"]) == list(widget.cells["label"])
    np.testing.assert_allclose(back[["centroid_y", "centroid_x"]], widget.cells[["centroid_y", "centroid_x"]])
    widget.import_geojson(exported)
    assert viewer.layers["cells cells"].features["label"].tolist() == back["label"].tolist()


def test_a_layer_not_opened_from_a_file_is_refused_clearly(make_napari_viewer, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_hematology.widgets.whole_slide.report_error", messages.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="pasted")
    widget = WholeSlideWidget(viewer)
    widget.analyse()
    assert "was not opened from a file" in str(messages[0])


def test_find_reading_area_adds_an_editable_shape_chosen_for_the_run(dock, qtbot, tmp_path):
    viewer, widget = dock
    smear = write_ome_pyramid(tmp_path / "thin.ome.tif", synthetic_smear(), levels=2, pixel_size_um=1.0)
    viewer.open(str(smear), plugin="napari-hematology")
    widget.form.slide.value = "thin.ome"
    widget.find_reading_area()
    qtbot.waitUntil(lambda: "thin.ome reading area" in viewer.layers, timeout=30_000)
    _run_to_end(widget, qtbot)
    shapes = viewer.layers["thin.ome reading area"]
    assert shapes.nshapes == 1 and shapes.editable
    assert shapes.data[0][:, 1].min() >= 900 and shapes.data[0][:, 1].max() <= 2100  # the monolayer third
    assert widget.form.regions.value == "thin.ome reading area"
    polygons, find_area = widget._regions()
    assert not find_area and np.allclose(polygons[0], shapes.data[0])


@pytest.mark.slow
def test_the_worker_runs_from_a_script_without_a_main_guard(tmp_path):
    """A spawned worker does not re-run the caller's script (which would start napari and a worker again)."""
    import subprocess
    import sys

    from napari_hematology.core.cells.samples import sample_fields

    script = tmp_path / "no_guard.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from blast_helpers import FakeClassifier\n"
        "from napari_hematology.core.whole_slide.worker import SlideWorker\n"
        "print('script ran')\n"
        "worker = SlideWorker(classifier=FakeClassifier(blast_above=200))\n"
        f"result = worker.run({str(sample_fields()[0])!r}, {str(tmp_path / 'out')!r}, reading_area=False)\n"
        "worker.close()\n"
        "print('cells', len(result.cells))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("script ran") == 1, "the worker re-ran the script"
    assert "cells" in result.stdout


def test_a_killed_worker_says_what_happened():
    import signal

    worker = slide_worker.SlideWorker(classifier=FakeClassifier())
    worker.start()
    pid = worker.pid
    os.kill(pid, signal.SIGKILL)
    worker._process.join(10)
    message = worker._death_message()
    worker.close()
    assert "killed by the system (SIGKILL)" in message and "out of memory" in message
    assert "press Resume" in message


@pytest.mark.slow
def test_whole_slide_dock_keeps_torch_out_of_napari_process():
    """The classifier runs in the worker process, so opening the dock must not load torch in napari's."""
    from conftest import run_fresh_python

    script = (
        "import sys, napari\n"
        "viewer = napari.Viewer(show=False)\n"
        "viewer.window.add_plugin_dock_widget('napari-hematology', 'Whole slide')\n"
        "print('torch' in sys.modules)\n"
    )
    assert run_fresh_python(script, timeout=240).strip().splitlines()[-1] == "False"
