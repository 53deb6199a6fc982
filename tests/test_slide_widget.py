"""The Slide prediction widget: predict with bars, attention layer, gallery; training; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hematology.core.slides.bags import Bags, MilConfig
from napari_hematology.core.slides.features import descriptor_features
from napari_hematology.core.slides.fitting import train_mil
from napari_hematology.core.training import TrainConfig

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


def cells_layers(viewer, sample_field):
    labels = np.zeros(sample_field.shape[:2], np.int32)
    for index, (y, x) in enumerate([(100, 100), (240, 320), (380, 520)], start=1):
        labels[y - 30 : y + 30, x - 30 : x + 30] = index
    viewer.add_image(sample_field, name="field")
    return viewer.add_labels(labels, name="cells")


def test_predict_shows_bars_attention_and_gallery(make_napari_viewer, qtbot, sample_field, descriptor_model):
    from napari_hematology.widgets.slide import SlidePredictionWidget

    viewer = make_napari_viewer()
    labels = cells_layers(viewer, sample_field)
    widget = SlidePredictionWidget(viewer)
    assert widget.image_combo.currentText() == "field"
    assert widget.labels_combo.currentText() == "cells"
    assert "Ctrl+R" in widget.predict_button.text()
    widget.model_edit.setText(str(descriptor_model))
    widget.predict()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.bars.rowCount() == 2
    assert "cells attention" in viewer.layers
    assert list(labels.features["label"]) == [1, 2, 3]
    assert labels.features["attention"].sum() == pytest.approx(1.0, abs=1e-4)
    assert widget.gallery.count() == 3
    item = widget.gallery.item(0)
    widget.jump_to_cell(item)
    label, y, x = item.data(0x0100)
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((y, x))
    assert labels.selected_label == label


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
    from napari_hematology.core.slides.fitting import MilModel
    from napari_hematology.widgets.slide import SlidePredictionWidget

    calls = {}

    def fake_train(table, out, config, progress=None, should_stop=None):
        calls.update(table=table, out=out, config=config)
        return MilModel(None, ("NPM1", "control"), config.encoder, {"cross_validation": {"macro_f1": 0.5}})

    monkeypatch.setattr("napari_hematology.core.slides.fitting.train_from_table", fake_train)
    widget = SlidePredictionWidget(make_napari_viewer())
    widget.table_edit.setText(str(tmp_path / "BAGS.csv"))
    widget.out_edit.setText(str(tmp_path / "model"))
    widget.encoder_combo.setCurrentText("descriptors")
    widget.branch_per_class.setChecked(True)
    widget.train()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    assert calls["config"].branch_per_class and calls["config"].encoder == "descriptors"
    assert widget.model_edit.text() == str(tmp_path / "model")
