"""The Blast detection widget: run on the sample field, summary, threshold re-colouring, cell clicks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import timm  # noqa: F401  (load torch's LLVM-based triton before Qt's GL: they clash under Xvfb/Mesa)
from blast_helpers import FakeClassifier, background_only

from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR
from napari_hematology.widgets.blast import BlastDetectionWidget

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
    assert widget.image_box.currentText() == "field"
    assert "Ctrl+R" in widget.run_button.text()
    _run(widget, qtbot)
    layer = viewer.layers["field cells"]
    features = layer.features
    assert len(features) >= 1 and {"cell_id", "label", "blast_probability", "nc_ratio"} <= set(
        features.columns
    )
    assert set(np.unique(layer.data)) == {0, *features["cell_id"]}
    assert "white cells" in widget.summary.text()

    widget.threshold.setValue(0.05)  # every cell is a blast now, without recomputing
    assert fake_classifier.calls == 1
    assert (layer.features["label"] == "blast").all()
    assert "Blasts: 100.0%" in widget.summary.text()
    cell = features.iloc[0]
    colour = layer.colormap.map(np.array([cell["cell_id"]]))[0]
    np.testing.assert_allclose(colour[:3], np.array([231, 76, 60]) / 255, atol=0.01)

    event = SimpleNamespace(position=(cell["centroid_y"], cell["centroid_x"]))
    widget._on_click(layer, event)
    assert widget.cell_info.text().startswith(f"Cell {cell['cell_id']}: blast")
    assert not widget.crop_view.pixmap().isNull()


def test_image_without_cells_and_non_rgb_layers(make_napari_viewer, qtbot, fake_classifier):
    viewer = make_napari_viewer()
    viewer.add_image(background_only(), name="empty", rgb=True)
    widget = BlastDetectionWidget(viewer)
    _run(widget, qtbot)
    assert widget.summary.text() == "No white cells found."
    assert not viewer.layers["empty cells"].data.any()

    viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    widget.image_box.setCurrentText("gray")
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
    widget.model_edit.setText(str(tmp_path))
    _run(widget, qtbot)
    assert "field cells" not in viewer.layers
    assert len(messages) == 1 and "not a napari-hematology model folder" in messages[0]


def test_run_with_shipped_classifier(make_napari_viewer, qtbot, sample_field):
    if not (SHIPPED_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("shipped classifier weights not built yet")
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
