"""The Blast detection widget: run on the sample field, summary, threshold re-colouring, outlines and
legend, cell clicks and a cell panel that follows the threshold and new runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import timm  # noqa: F401  (load torch's LLVM-based triton before Qt's GL: they clash under Xvfb/Mesa)
from blast_helpers import FakeClassifier, background_only

from napari_hematology.core.cells.classes import BLAST, CLASS_COLOURS
from napari_hematology.widgets._keys import RUN, key_text
from napari_hematology.widgets._palette import hex_colour
from napari_hematology.widgets.blast import NO_CELL_SHOWN, OUTLINE_PIXELS, BlastDetectionWidget, _summary_text

pytestmark = pytest.mark.gui


def _run(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)


@pytest.fixture
def fake_classifier(monkeypatch):
    classifier = FakeClassifier(blast_above=200)
    monkeypatch.setattr("napari_hematology.widgets.blast.get_classifier", lambda model_dir=None: classifier)
    return classifier


@pytest.mark.slow
def test_run_threshold_and_click(make_napari_viewer, qtbot, sample_field, fake_classifier):
    viewer = make_napari_viewer()
    viewer.add_image(sample_field, name="field", rgb=True)
    widget = BlastDetectionWidget(viewer)
    assert widget.form.image.value == "field"
    assert key_text(RUN) in widget.run_button.text()
    _run(widget, qtbot)
    layer = viewer.layers["field cells"]
    features = layer.features
    assert len(features) >= 1 and {"cell_id", "label", "blast_probability", "nc_ratio"} <= set(
        features.columns
    )
    assert set(np.unique(layer.data)) == {0, *features["cell_id"]}
    assert widget.summary.text().startswith(f"{len(features)} white cell")

    widget.form.threshold.value = 0.05  # every cell is a blast now, without recomputing
    assert fake_classifier.calls == 1
    assert (layer.features["label"] == "blast").all()
    assert "Blasts: 100.0%" in widget.summary.text()
    cell = features.iloc[0]
    colour = layer.colormap.map(np.array([cell["cell_id"]]))[0]
    np.testing.assert_allclose(colour[:3], np.array(CLASS_COLOURS[BLAST]) / 255, atol=0.01)

    event = SimpleNamespace(position=(cell["centroid_y"], cell["centroid_x"]))
    widget._on_click(layer, event)
    assert widget.cell_info.text().startswith(f"Cell {cell['cell_id']}: blast")
    assert not widget.crop_view.pixmap().isNull()


def test_cells_are_class_outlines_with_a_legend_and_a_filled_toggle(
    make_napari_viewer, qtbot, sample_field, fake_classifier
):
    viewer = make_napari_viewer()
    viewer.add_image(sample_field, name="field", rgb=True)
    widget = BlastDetectionWidget(viewer)
    _run(widget, qtbot)
    layer = viewer.layers["field cells"]
    assert layer.contour == OUTLINE_PIXELS and layer.opacity == 1.0
    expected = {name: hex_colour(CLASS_COLOURS[name]) for name in fake_classifier.classes}
    assert widget.legend.colours == expected
    widget.form.filled.value = True
    assert layer.contour == 0 and layer.opacity < 1.0
    widget.form.filled.value = False
    assert layer.contour == OUTLINE_PIXELS


def test_cell_panel_follows_the_threshold_and_new_runs(
    make_napari_viewer, qtbot, sample_field, fake_classifier
):
    viewer = make_napari_viewer()
    viewer.add_image(sample_field, name="field", rgb=True)
    viewer.add_image(background_only(), name="empty", rgb=True)
    widget = BlastDetectionWidget(viewer)
    widget.form.image.value = "field"
    widget.form.threshold.value = 0.95  # no cell is a blast
    _run(widget, qtbot)
    cell_id = int(widget.analysis.cells["cell_id"].iloc[0])
    widget.show_cell(cell_id)
    assert not widget.cell_info.text().startswith(f"Cell {cell_id}: blast")
    widget.form.threshold.value = 0.05  # now it is
    assert widget.cell_info.text().startswith(f"Cell {cell_id}: blast")

    widget.form.image.value = "empty"
    _run(widget, qtbot)
    assert widget.cell_info.text() == NO_CELL_SHOWN
    assert widget.crop_view.pixmap() is None or widget.crop_view.pixmap().isNull()


def test_summary_counts_one_cell_in_the_singular():
    summary = {"cells": 1, "counts": {"blast": 1, "monocyte": 0}, "blast_percent": 100.0}
    assert _summary_text(summary).startswith("1 white cell: blast 1.")
    assert _summary_text({**summary, "cells": 2}).startswith("2 white cells:")


def test_summary_has_the_cli_interval_small_count_warning_and_cells_left_out():
    from napari_hematology.core.cells.batch import blast_uncertainty

    summary = {"cells": 3, "counts": {"blast": 0, "neutrophil": 3}, "blast_percent": 0.0,
               "left_out": {"cut by the image edge": 2}}
    text = _summary_text(summary)
    low, high = blast_uncertainty(0, 3)["blast_ci95_percent"]
    assert f"Blasts: 0.0% (95% CI {low:.1f}-{high:.1f}%)" in text
    assert blast_uncertainty(0, 3)["warnings"][0] in text, "the CLI's small-count warning"
    assert "Left out of the counts: 2 cells (cut by the image edge: 2)." in text
    many = _summary_text({"cells": 200, "counts": {"blast": 10}, "blast_percent": 5.0, "left_out": {}})
    assert "too few" not in many and "Left out" not in many


def test_long_layer_names_are_not_cut(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = BlastDetectionWidget(viewer)
    widget.show()
    qtbot.waitExposed(widget)
    name = "patient_0042_bone_marrow_aspirate_field_17_2024-05-01"
    viewer.add_image(background_only(), name=name, rgb=True)  # a layer opened after the dock
    combo = widget.form.image.native
    assert combo.currentText() == name
    qtbot.waitUntil(lambda: combo.width() > combo.fontMetrics().horizontalAdvance(name), timeout=2000)


def test_image_without_cells_and_non_rgb_layers(make_napari_viewer, qtbot, fake_classifier):
    viewer = make_napari_viewer()
    viewer.add_image(background_only(), name="empty", rgb=True)
    widget = BlastDetectionWidget(viewer)
    _run(widget, qtbot)
    assert widget.summary.text().splitlines()[0] == "No white cells found."
    assert "empty: pixel size" in widget.summary.text()
    assert not viewer.layers["empty cells"].data.any()

    viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    widget.form.image.value = "gray"
    widget.run()  # refused with a message, nothing started
    assert not widget.runner.busy and "gray cells" not in viewer.layers


def test_bad_model_folder_is_shown_as_a_message(
    make_napari_viewer, qtbot, sample_field, tmp_path, monkeypatch
):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    viewer.add_image(sample_field, name="field", rgb=True)
    widget = BlastDetectionWidget(viewer)
    widget.form.model.value = tmp_path
    _run(widget, qtbot)
    assert "field cells" not in viewer.layers
    assert len(messages) == 1 and "not a napari-hematology model folder" in messages[0]


def test_run_with_shipped_classifier(make_napari_viewer, qtbot, sample_field, shipped_weights):
    viewer = make_napari_viewer()
    viewer.add_image(sample_field, name="field", rgb=True)
    widget = BlastDetectionWidget(viewer)
    _run(widget, qtbot)
    features = viewer.layers["field cells"].features
    assert len(features) >= 1
    assert features["label"].isin(widget.analysis.classes).all()


def test_visible_window_maps_the_shown_field_to_full_resolution():
    from napari_hematology.widgets.blast import _visible_window

    flat = SimpleNamespace(corner_pixels=np.array([[100, 200], [299, 499]]), multiscale=False)
    assert _visible_window(flat, (1000, 1000)) == (slice(100, 300), slice(200, 500))
    pyramid = SimpleNamespace(
        corner_pixels=np.array([[10, 20], [59, 2000]]),
        multiscale=True,
        data_level=1,
        downsample_factors=[(1, 1), (4, 4)],
    )
    assert _visible_window(pyramid, (1000, 1000)) == (slice(40, 240), slice(80, 1000))
    tiny = SimpleNamespace(corner_pixels=np.array([[0, 0], [3, 3]]), multiscale=False)
    assert _visible_window(tiny, (50, 60)) == (slice(0, 50), slice(0, 60))


@pytest.mark.slow
def test_send_to_review_puts_every_detected_cell_in_the_project(
    make_napari_viewer, qtbot, sample_field, fake_classifier, tmp_path
):
    from napari_hematology.core.labels.store import AnnotationStore

    viewer = make_napari_viewer()
    viewer.add_image(sample_field, name="field", rgb=True)
    widget = BlastDetectionWidget(viewer)
    assert not widget.review_button.isEnabled()
    _run(widget, qtbot)
    assert widget.review_button.isEnabled()
    detected = viewer.layers["field cells"].features
    project = tmp_path / "review.sqlite"
    widget.send_to_review(project)
    with AnnotationStore(project) as store:
        cells = store.cells()
        labels = store.current_labels()
    assert len(cells) == len(detected)
    assert all(Path(crop).is_file() for crop in cells["crop"])
    assert sorted(labels["label"]) == sorted(detected["label"])
    assert set(labels["source"]) == {"model"}


def test_pixel_size_from_the_layer_metadata_or_the_form_is_used_and_shown(
    make_napari_viewer, qtbot, sample_field, fake_classifier
):
    viewer = make_napari_viewer()
    viewer.add_image(
        sample_field, name="field", rgb=True,
        metadata={"pixel_size_um": 0.1, "pixel_size_source": "OME PhysicalSizeX"},
    )
    widget = BlastDetectionWidget(viewer)
    _run(widget, qtbot)
    assert widget.analysis.pixel_size.um_per_px == pytest.approx(0.1)
    assert "from OME PhysicalSizeX" in widget.summary.text()

    widget.form.pixel_size.value = 0.05
    _run(widget, qtbot)
    assert widget.analysis.pixel_size.um_per_px == pytest.approx(0.05)
    assert "set by the user" in widget.summary.text()


def test_many_unfamiliar_cells_add_advice_to_the_summary():
    from napari_hematology.widgets.blast import _unfamiliar_note

    assert _unfamiliar_note(pd.DataFrame({"atypical_score": [0.2] * 12})) == []
    (note,) = _unfamiliar_note(pd.DataFrame({"atypical_score": [0.99] * 12}))
    assert note.startswith("100% of these cells look unlike") and "review" in note
    assert _unfamiliar_note(pd.DataFrame()) == []


def test_results_never_make_the_page_scroll_sideways(
    make_napari_viewer, qtbot, sample_field, fake_classifier
):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.add_image(sample_field, name="field", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-hematology", "Blast detection")
    _run(widget, qtbot)
    widget.show_cell(int(widget.analysis.cells["cell_id"].iloc[0]))
    qtbot.wait(100)
    area = widget.findChild(QScrollArea)
    assert area.horizontalScrollBar().maximum() == 0
