"""Review labels on a project made by Send to review: the classifier's call is given and suggested, Enter
typed in a text field never acts on a cell, and the viewer shows the whole cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_hematology.core.labels.exchange import send_to_review
from napari_hematology.core.labels.review import review_queue
from napari_hematology.core.labels.store import AnnotationStore

CLASSES = ["neutrophil", "lymphocyte", "blast"]


def _sent_project(tmp_path, count: int = 4, crop_side: int = 60):
    """A project as Blast detection's Send to review makes it: the classifier's calls, no label issues."""
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), count)
    cells = pd.DataFrame(
        {
            "cell_id": np.arange(1, count + 1),
            "centroid_x": rng.uniform(100, 500, count),
            "centroid_y": rng.uniform(100, 400, count),
            "label": np.asarray(CLASSES)[probabilities.argmax(axis=1)],
            **{f"prob_{name}": probabilities[:, i] for i, name in enumerate(CLASSES)},
        }
    )
    crop = np.full((crop_side, crop_side, 3), 220, dtype=np.uint8)
    crop[15:45, 15:45] = (120, 50, 160)
    slide = tmp_path / "field.png"
    import imageio.v3 as iio

    iio.imwrite(slide, np.full((480, 640, 3), 230, np.uint8))
    project = tmp_path / "sent.sqlite"
    send_to_review(project, slide, cells, [crop] * count, CLASSES)
    return project, cells, slide


def test_the_queue_gives_and_suggests_the_classifiers_call(tmp_path):
    project, cells, _ = _sent_project(tmp_path)
    with AnnotationStore(project) as store:
        queue = review_queue(store, "dr_a", order="uncertainty")
    names = cells["cell_id"].map(lambda i: f"{tmp_path / 'field.png'}#{i}")
    calls = dict(zip(names, cells["label"], strict=True))
    assert queue["given"].notna().all() and queue["suggested"].notna().all()
    assert (queue["given"] == queue["cell"].map(calls)).all()
    assert (queue["suggested"] == queue["given"]).all()
    confidence = cells[[f"prob_{name}" for name in CLASSES]].max(axis=1).sort_values().to_numpy()
    np.testing.assert_allclose(queue["confidence"].to_numpy(), confidence)  # least sure first


@pytest.fixture
def review(make_napari_viewer, qtbot, tmp_path):
    from napari_hematology.widgets.review import ReviewLabelsWidget

    project, cells, slide = _sent_project(tmp_path)
    viewer = make_napari_viewer(show=True)
    widget = ReviewLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    window = widget.window()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    widget.project_bar.open_project(project)
    return widget, project, cells, slide


@pytest.mark.gui
def test_send_to_review_projects_show_given_and_suggested_and_enter_confirms(review, qtbot):
    widget, project, _, _ = review
    shown = widget.review_queue.cell_view
    widget.project_bar.annotator.setText("dr_a")
    widget.review_queue.refresh()
    text = shown.cell_label.text()
    assert "nan" not in text and "Given: " in text and "Suggested: " in text
    given = widget.review_queue.queue["given"].iloc[0]
    qtbot.keyClick(shown.crop_view, Qt.Key_Return)
    with AnnotationStore(project) as store:
        mine = store.current_labels(["dr_a"])
    assert mine["label"].tolist() == [given]


@pytest.mark.gui
def test_enter_in_the_annotator_field_never_acts_on_a_cell(review, qtbot):
    widget, project, _, _ = review
    field = widget.project_bar.annotator
    field.setFocus()
    qtbot.waitUntil(field.hasFocus, timeout=2000)
    qtbot.keyClicks(field, "dr_b")
    qtbot.keyClick(field, Qt.Key_Return)
    assert field.hasFocus(), "the focus stays in the field"
    qtbot.keyClick(field, Qt.Key_Return)
    qtbot.keyClick(field, Qt.Key_Enter)
    with AnnotationStore(project) as store:
        assert store.current_labels(["dr_b"]).empty, "Enter in a text field recorded a decision"
    assert widget.review_queue.queue is not None and len(widget.review_queue.queue) == 4


@pytest.mark.gui
def test_the_viewer_shows_the_whole_cell_not_inside_it(review, qtbot):
    from napari_hematology.widgets.review_cell import CELL_SHARE

    widget, _, _, slide = review
    viewer = widget.viewer
    viewer.open(str(slide), plugin="napari-hematology")
    widget.project_bar.annotator.setText("dr_a")
    widget.review_queue.refresh()
    shown = viewer.scene.camera.zoom * 60  # the crop's side on screen
    assert shown <= CELL_SHARE * min(viewer.canvas.size) + 1, "the whole crop fits the canvas with room"
    row = widget.review_queue.queue.iloc[0]
    assert np.allclose(viewer.scene.camera.center[-2:], (row["y"], row["x"]))
