"""The Expression widget: load, train in the background, show the latent map (palette colours, legend,
modest points) and the confusion matrix of held-out cells as a heatmap named on both axes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_hematology.core.expression.maps import LatentMap
from napari_hematology.widgets._palette import category_colours


def write_cells_csv(path, n_cells: int = 90) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(n_cells) % 3
    counts = rng.poisson(1.0, (n_cells, 30)).astype(float)
    for cls in range(3):
        counts[labels == cls, cls * 10 : cls * 10 + 10] += 20
    table = pd.DataFrame(counts, columns=[f"G{i}" for i in range(30)])
    table.insert(0, "cell", [f"c{i}" for i in range(n_cells)])
    table["lineage"] = np.array(["ery", "mye", "lym"])[labels]
    table.to_csv(path, index=False)


def heatmap(widget, qtbot) -> tuple:
    """The confusion heatmap's axes, its column and row names, and the counts written in its cells."""
    area = widget.confusion  # drawn in a worker thread
    qtbot.waitUntil(lambda: not area.drawing and area.figure is not None, timeout=10_000)
    axes = area.figure.axes[0]
    columns = [label.get_text() for label in axes.get_xticklabels()]
    rows = [label.get_text() for label in axes.get_yticklabels()]
    counts = np.zeros((len(rows), len(columns)), int)
    for text in axes.texts:
        column, row = text.get_position()
        counts[round(row), round(column)] += int(text.get_text())
    return axes, columns, rows, counts


@pytest.fixture
def widget(make_napari_viewer):
    from napari_hematology.widgets.expression import ExpressionWidget

    viewer = make_napari_viewer()
    widget = ExpressionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


@pytest.mark.gui
def test_train_shows_points_with_features_and_confusion(widget, qtbot, tmp_path):
    write_cells_csv(tmp_path / "cells.csv")
    widget.path_edit.setText(str(tmp_path / "cells.csv"))
    widget.load_data()  # read in the dock's worker
    qtbot.waitUntil(lambda: widget.data is not None, timeout=60_000)
    assert widget.label_combo.currentText() == "lineage"
    assert widget.head_combo.currentText() == "auto"
    widget.epochs_spin.setValue(2)
    widget.head_combo.setCurrentText("linear")
    widget.train()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    layer = widget.viewer.layers["cells.csv latent map"]
    assert layer.data.shape == (90, 2)
    assert {"label", "predicted", "confidence"} <= set(layer.features.columns)
    held_out = int((layer.features["split"] == "held out").sum())
    assert held_out == 18  # 20% of each class of 30
    axes, columns, rows, counts = heatmap(widget, qtbot)
    assert columns == rows == list(widget.model.classes) and sorted(rows) == ["ery", "lym", "mye"]
    assert counts.sum() == held_out and np.trace(counts) >= 16
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted class", "true class")
    assert widget.confusion.figure.get_suptitle() == "Confusion matrix, 18 cells"
    assert len(widget.confusion.figure.axes) == 2, "the matrix and its colour bar"
    assert "18 held-out cells" in widget.scored_on.text()

    widget.save_button.setEnabled(True)
    from napari_hematology.core.expression import save_expression_model

    save_expression_model(widget.model, tmp_path / "model")
    widget.viewer.layers.clear()
    widget.apply_model(tmp_path / "model")
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert len(widget.viewer.layers) == 1


@pytest.mark.gui
def test_bad_input_is_reported_not_raised(widget, tmp_path, monkeypatch, qtbot):
    shown = []
    monkeypatch.setattr("napari_hematology.widgets._runner.report_error", shown.append)
    monkeypatch.setattr("napari_hematology.widgets.expression.report_error", shown.append)
    widget.path_edit.setText(str(tmp_path / "absent.h5ad"))
    widget.load_data()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.data is None and "no such file" in str(shown[-1])
    pd.DataFrame({"cell": ["a", "b"], "G1": [1.0, np.nan], "type": ["x", "y"]}).to_csv(
        tmp_path / "nan.csv", index=False)
    widget.path_edit.setText(str(tmp_path / "nan.csv"))
    widget.load_data()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    widget.apply_model(tmp_path)
    assert "not a napari-hematology model folder" in str(shown[-1])
    assert len(widget.viewer.layers) == 0


def fake_map(classes: list[str], n_cells: int = 200) -> LatentMap:
    rng = np.random.default_rng(0)
    labels = np.asarray(classes)[np.arange(n_cells) % len(classes)]
    features = pd.DataFrame({"cell": [f"c{i}" for i in range(n_cells)], "label": labels, "predicted": labels})
    confusion = pd.crosstab(pd.Series(labels, name="true"), pd.Series(labels, name="predicted"))
    return LatentMap(rng.normal(0, 3, (n_cells, 2)), features, confusion, "40 held-out cells")


@pytest.mark.gui
def test_map_colours_legend_point_size_and_whole_confusion_heatmap(widget, qtbot):
    classes = [f"CD{14 + i}+ Monocyte type {i}" for i in range(10)]
    view = fake_map(classes)
    widget.data = SimpleNamespace(name="cells", notes=[])
    widget.model = SimpleNamespace(classes=classes)
    widget.viewer.window._qt_window.show()
    widget._show_map(view)
    layer = widget.viewer.layers["cells latent map"]
    assert len({tuple(colour) for colour in np.round(layer.face_color, 3)}) == 10
    assert widget.legend.colours == category_colours(classes)
    extent = np.ptp(view.coordinates, axis=0).max()
    assert np.all(layer.size <= 0.02 * extent)
    from qtpy.QtWidgets import QScrollArea

    area = widget.confusion
    ratio = area.devicePixelRatioF()

    def laid_out() -> bool:  # the image has its place in the page, and the figure the page's width
        if area.drawing or area.figure is None:
            return False
        return area.image.height() == area.height() > 0 and round(area.figure.bbox.width) == round(
            area.width() * ratio)

    qtbot.waitUntil(laid_out, timeout=5000)
    axes, columns, rows, counts = heatmap(widget, qtbot)
    assert columns == rows == classes and np.trace(counts) == counts.sum() == 200
    page = widget.findChild(QScrollArea)
    assert page.horizontalScrollBar().maximum() == 0, "ten long names fit the page's width"
    for button in (widget.browse_button, widget.train_button, widget.save_button, widget.apply_button):
        assert button.isVisible() and not button.visibleRegion().isEmpty(), button.text()
    inside = area.figure.bbox
    texts = [*axes.get_xticklabels(), *axes.get_yticklabels(), *area.figure.texts, axes.xaxis.label,
             axes.yaxis.label]
    for text in texts:  # every name and label is drawn inside the figure, none cut off
        box = text.get_window_extent()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, (
            text.get_text()
        )
    cell = axes.get_window_extent().width / len(classes)
    assert cell >= 12 * ratio, f"cells {cell:.0f} px wide: too small to read a count"


@pytest.mark.gui
def test_train_without_data_says_one_thing(widget, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_hematology.widgets.expression.show_info", shown.append)
    widget.train()
    assert shown == ["Load an expression file first (Open…)."]
