"""The Slide prediction widget: predict with bars, attention layer and colour bar, gallery of whole cells;
a failed prediction clears the last one; training from the form; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hematology.core.subtype.bags import Bags, MilConfig
from napari_hematology.core.subtype.features import descriptor_features
from napari_hematology.core.subtype.fitting import train_mil
from napari_hematology.core.training import TrainConfig
from napari_hematology.widgets._keys import RUN, key_text

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def descriptor_model(tmp_path_factory):
    """A tiny bag model on the 'descriptors' encoder (random features of the right width)."""
    width = descriptor_features([np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)]).shape[1]
    rng = np.random.default_rng(0)
    bags = Bags(
        names=[f"b{i}" for i in range(8)],
        features=[rng.normal(size=(5, width)).astype(np.float32) for _ in range(8)],
        cells=[list(range(5))] * 8,
        labels=["NPM1", "control"] * 4,
    )
    config = MilConfig(encoder="descriptors", folds=0, train=TrainConfig(epochs=2, device="cpu"))
    folder = tmp_path_factory.mktemp("mil") / "model"
    train_mil(bags, config).save(folder)
    return folder


CENTRES = [(100, 100), (240, 320), (380, 520)]
PURPLE = (120, 40, 160)


def cells_layers(viewer, image, half: int = 30, centres=CENTRES):
    labels = np.zeros(image.shape[:2], np.int32)
    for index, (y, x) in enumerate(centres, start=1):
        labels[y - half : y + half, x - half : x + half] = index
    viewer.add_image(image, name="field")
    return viewer.add_labels(labels, name="cells")


def predict(widget, qtbot, model) -> None:
    widget.model_edit.setText(str(model))
    widget.predict()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)


def test_predict_shows_bars_attention_and_gallery(make_napari_viewer, qtbot, sample_field, descriptor_model):
    from napari_hematology.widgets.slide import SlidePredictionWidget

    viewer = make_napari_viewer()
    labels = cells_layers(viewer, sample_field)
    widget = SlidePredictionWidget(viewer)
    assert widget.image_combo.currentText() == "field"
    assert widget.labels_combo.currentText() == "cells"
    assert key_text(RUN) in widget.predict_button.text()
    predict(widget, qtbot, descriptor_model)
    assert widget.bars.rowCount() == 2
    assert list(labels.features["label"]) == [1, 2, 3]
    assert labels.features["attention"].sum() == pytest.approx(1.0, abs=1e-4)
    assert widget.gallery.count() == 3
    item = widget.gallery.item(0)
    widget.jump_to_cell(item)
    label, y, x = item.data(0x0100)
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((y, x))
    assert labels.selected_label == label


def test_attention_is_its_own_layer_with_a_colour_bar(
    make_napari_viewer, qtbot, sample_field, descriptor_model
):
    from napari_hematology.widgets.slide import SlidePredictionWidget

    viewer = make_napari_viewer()
    cells_layers(viewer, sample_field)
    widget = SlidePredictionWidget(viewer)
    predict(widget, qtbot, descriptor_model)
    attention = viewer.layers["cells attention"]
    assert attention.blending != "additive" and attention.colorbar.visible
    assert viewer.layers.index(attention) == viewer.layers.index("cells") - 1  # class outlines stay on top
    assert attention.colormap.map(np.array([0.0]))[0][3] == 0  # no fill between the cells
    assert attention.colormap.map(np.array([1.0]))[0][3] == 1
    assert "'cells'" in widget.layers_note.text() and "'cells attention'" in widget.layers_note.text()


def test_gallery_shows_whole_cells_at_a_readable_size(make_napari_viewer, qtbot, descriptor_model):
    from napari_hematology.widgets.slide import SlidePredictionWidget

    image = np.full((480, 640, 3), 240, np.uint8)
    for y, x in CENTRES:
        image[y - 50 : y + 50, x - 50 : x + 50] = PURPLE
    viewer = make_napari_viewer()
    cells_layers(viewer, image, half=50)
    widget = SlidePredictionWidget(viewer)
    predict(widget, qtbot, descriptor_model)
    assert widget.gallery.iconSize().width() >= 96
    icon = widget.gallery.item(0).icon()
    thumbnail = icon.pixmap(widget.gallery.iconSize()).toImage()
    assert min(thumbnail.width(), thumbnail.height()) >= 96
    centre = thumbnail.pixelColor(thumbnail.width() // 2, thumbnail.height() // 2)
    corner = thumbnail.pixelColor(2, 2)
    assert (centre.red(), centre.green(), centre.blue()) == pytest.approx(PURPLE, abs=8)
    assert (corner.red(), corner.green(), corner.blue()) == pytest.approx((240, 240, 240), abs=8)


def test_a_failed_prediction_clears_the_last_one(make_napari_viewer, qtbot, sample_field, descriptor_model):
    from napari_hematology.widgets.slide import SlidePredictionWidget

    viewer = make_napari_viewer()
    cells_layers(viewer, sample_field)
    widget = SlidePredictionWidget(viewer)
    predict(widget, qtbot, descriptor_model)
    assert widget.result_label.text().startswith("Predicted")
    viewer.layers["cells"].data = np.where(viewer.layers["cells"].data == 1, 1, 0)  # one cell left
    predict(widget, qtbot, descriptor_model)
    assert widget.result_label.text() == "No prediction for field."
    assert widget.bars.rowCount() == 0 and widget.gallery.count() == 0 and not widget.layers_note.text()


def test_bad_input_is_reported_not_raised(make_napari_viewer, qtbot, sample_field, tmp_path, monkeypatch):
    import napari_hematology.widgets._runner as runner_module
    import napari_hematology.widgets.slide as slide_module
    from napari_hematology.widgets.slide import SlidePredictionWidget

    errors = []
    monkeypatch.setattr(slide_module, "show_error", errors.append)
    monkeypatch.setattr(runner_module, "report_error", lambda error: errors.append(str(error)))
    viewer = make_napari_viewer()
    widget = SlidePredictionWidget(viewer)
    widget.predict()
    assert "Choose an image" in errors[-1]
    cells_layers(viewer, sample_field)
    widget.model_edit.setText(str(tmp_path / "missing"))
    widget.predict()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    assert "not a napari-hematology model folder" in errors[-1]
    widget.train()
    assert "slides table" in errors[-1]


def test_train_from_the_widget(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_hematology.core.subtype.fitting import MilModel
    from napari_hematology.widgets.slide import SlidePredictionWidget

    calls = {}

    def fake_train(table, out, config, progress=None, should_stop=None):
        calls.update(table=table, out=out, config=config)
        return MilModel(None, ("NPM1", "control"), config.encoder, {"cross_validation": {"macro_f1": 0.5}})

    monkeypatch.setattr("napari_hematology.core.subtype.fitting.train_from_table", fake_train)
    widget = SlidePredictionWidget(make_napari_viewer())
    form = widget.form
    form.table.value = tmp_path / "BAGS.csv"
    form.out.value = tmp_path / "model"
    form.encoder.value = "descriptors"
    form.branch_per_class.value = True
    form.min_cells.value = 1
    widget.train()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    assert calls["config"].branch_per_class and calls["config"].encoder == "descriptors"
    assert calls["config"].min_cells == 1
    assert widget.model_edit.text() == str(tmp_path / "model")


def test_the_forms_minimum_bag_size_is_the_models_default():
    from napari_hematology.widgets.slide import DEFAULT_MIN_CELLS, train_form

    assert MilConfig.min_cells == DEFAULT_MIN_CELLS
    assert train_form().min_cells.value == MilConfig.min_cells
