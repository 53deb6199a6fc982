"""The Review labels widget: keys, undo, progress, filters, retrain in the background, messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_hematology.core.labels.review import review_queue, store_issues
from napari_hematology.core.labels.store import AnnotationStore


def _crop(path, colour) -> str:
    import imageio.v3 as iio

    image = np.full((40, 40, 3), 230, dtype=np.uint8)
    image[10:30, 10:30] = colour
    iio.imwrite(path, image)
    return path.name


@pytest.fixture
def issues(tmp_path) -> pd.DataFrame:
    names = [_crop(tmp_path / f"cell{i}.png", (120 + 20 * i, 40, 160)) for i in range(4)]
    return pd.DataFrame(
        {
            "image": names,
            "given": ["blast", "normal", "blast", "normal"],
            "suggested": ["normal", "normal", "normal", "blast"],
            "issue_score": [0.9, 0.1, 0.6, 0.8],
            "is_issue": [True, False, False, True],
            "confidence": [0.9, 0.6, 0.55, 0.8],
        }
    )


@pytest.fixture
def widget(make_napari_viewer, qtbot, tmp_path, issues):
    from napari_hematology.widgets.review import ReviewLabelsWidget

    issues.to_csv(tmp_path / "issues.csv", index=False)
    review = ReviewLabelsWidget(make_napari_viewer())
    qtbot.addWidget(review)
    review.project_bar.open_project(tmp_path / "project.sqlite")
    review.project_bar.load_issues(tmp_path / "issues.csv")
    review.project_bar.annotator.setText("dr_a")
    review.review_queue.refresh()
    return review


@pytest.mark.gui
def test_keys_label_accept_undo_and_move(widget, qtbot):
    queue, shown = widget.review_queue, widget.review_queue.cell_view
    assert queue.current_cell() == "cell0.png"  # highest issue score first
    assert shown.counter.text() == "0 / 4 reviewed"
    assert "Suggested: normal" in shown.cell_label.text()
    assert shown.crop_view.pixmap() is not None and not shown.crop_view.pixmap().isNull()
    qtbot.keyClick(shown.crop_view, Qt.Key_1)  # class 1 = blast (keep the given label)
    assert queue.current_cell() == "cell3.png"
    qtbot.keyClick(shown.crop_view, Qt.Key_Return)  # accept suggestion: blast
    assert shown.counter.text() == "2 / 4 reviewed"
    qtbot.keyClick(shown.crop_view, Qt.Key_Backspace)
    assert queue.current_cell() == "cell3.png"
    assert shown.counter.text() == "1 / 4 reviewed"
    qtbot.keyClick(shown.crop_view, Qt.Key_Left)
    assert queue.current_cell() == "cell0.png"
    with AnnotationStore(widget.project_bar.project) as store:
        mine = store.current_labels(["dr_a"])
        history = store.history()
    assert mine.set_index("cell")["label"].to_dict() == {"cell0.png": "blast"}
    assert (history["annotator"] == "dr_a").sum() == 3  # two decisions and one undo, all kept


@pytest.mark.gui
def test_filters_and_missing_annotator(widget, qtbot):
    queue, filters = widget.review_queue, widget.filters
    filters.min_score.setValue(0.7)
    assert queue.cell_view.counter.text() == "0 / 2 reviewed"
    filters.min_score.setValue(0.0)
    filters.order.setCurrentText("uncertainty")
    assert queue.current_cell() in {"cell0.png", "cell1.png", "cell2.png", "cell3.png"}
    assert queue.queue["cell"].iloc[0] == "cell2.png"
    widget.project_bar.annotator.setText("")
    qtbot.keyClick(queue.cell_view.crop_view, Qt.Key_2)
    with AnnotationStore(widget.project_bar.project) as store:
        assert store.annotators(source="human") == []


@pytest.mark.gui
def test_bad_project_file_is_reported_not_raised(make_napari_viewer, qtbot, tmp_path):
    from napari_hematology.widgets.review import ReviewLabelsWidget

    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"garbage" * 50)
    review = ReviewLabelsWidget(make_napari_viewer())
    qtbot.addWidget(review)
    review.project_bar.open_project(broken)
    assert review.project_bar.project is None
    assert broken.read_bytes() == b"garbage" * 50
    qtbot.keyClick(review.review_queue.cell_view.crop_view, Qt.Key_1)  # no project: ignored, no crash


@pytest.mark.gui
def test_retrain_runs_in_background_and_refreshes(widget, qtbot, monkeypatch, issues):
    import napari_hematology.core.labels.review as review_module

    def fake_retrain(project, *, progress=None, should_stop=None):
        store_issues(
            project,
            issues.assign(suggested="blast", issue_score=[0.1, 0.2, 0.3, 0.95]),
            base=widget.project_bar.project.parent,
        )
        return issues

    monkeypatch.setattr(review_module, "retrain_project", fake_retrain)
    widget.retrain()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=20000)
    assert widget.review_queue.queue["cell"].iloc[0] == "cell3.png"
    with AnnotationStore(widget.project_bar.project) as store:
        assert review_queue(store, "dr_a")["suggested"].eq("blast").all()


@pytest.mark.gui
def test_find_issues_trains_in_the_background(make_napari_viewer, qtbot, tmp_path):
    from napari_hematology.widgets.review import ReviewLabelsWidget

    colours = [(200, 40, 160)] * 4 + [(60, 40, 200)] * 4
    names = [_crop(tmp_path / f"c{i}.png", colour) for i, colour in enumerate(colours)]
    labels = ["blast"] * 3 + ["normal"] * 5  # c3 looks like a blast but is labelled normal
    pd.DataFrame({"image": names, "label": labels}).to_csv(tmp_path / "cells.csv", index=False)
    review = ReviewLabelsWidget(make_napari_viewer())
    qtbot.addWidget(review)
    review.project_bar.open_project(tmp_path / "project.sqlite")
    review.project_bar.find_issues(tmp_path / "cells.csv")
    qtbot.waitUntil(lambda: not review.runner.busy, timeout=60000)
    assert review.review_queue.cell_view.counter.text() == "0 / 8 reviewed"
    assert review.runner.status.text() == "Done."
    queue = review.review_queue.queue.set_index("cell")
    assert review.review_queue.current_cell() == "c3.png"  # the planted mislabel is shown first
    assert queue.loc["c3.png", ["given", "suggested"]].tolist() == ["normal", "blast"]
    assert queue.loc["c3.png", "issue_score"] > 0.5 > queue.drop("c3.png")["issue_score"].max()
    assert (queue.drop("c3.png")["suggested"] == queue.drop("c3.png")["given"]).all()
    assert "Suggested: blast" in review.review_queue.cell_view.cell_label.text()


@pytest.mark.gui
def test_enter_in_annotator_field_only_sets_the_name(widget, qtbot):
    annotator, queue = widget.project_bar.annotator, widget.review_queue
    with AnnotationStore(widget.project_bar.project) as store:
        events_before = store.event_count()
    annotator.clear()
    qtbot.keyClicks(annotator, "dr_b")
    qtbot.keyClick(annotator, Qt.Key_Return)
    with AnnotationStore(widget.project_bar.project) as store:
        assert store.event_count() == events_before
    assert queue.current_cell() == "cell0.png"
    qtbot.keyClick(queue.cell_view.crop_view, Qt.Key_Return)  # decisions now go under the new name
    with AnnotationStore(widget.project_bar.project) as store:
        assert store.current_labels(["dr_b"]).set_index("cell")["label"].to_dict() == {"cell0.png": "normal"}


@pytest.mark.gui
def test_keys_without_a_project_ask_to_open_one(make_napari_viewer, qtbot, monkeypatch):
    from napari_hematology.widgets.review import ReviewLabelsWidget

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_info", shown.append)
    review = ReviewLabelsWidget(make_napari_viewer())
    qtbot.addWidget(review)
    review.project_bar.annotator.setText("dr_a")
    qtbot.keyClick(review.review_queue.cell_view.crop_view, Qt.Key_Backspace)
    assert len(shown) == 1 and shown[0].startswith("Open or create a project first")
    review.project_bar.annotator.clear()
    qtbot.keyClick(review.review_queue.cell_view.crop_view, Qt.Key_Backspace)
    assert len(shown) == 2 and "Type your name" not in shown[-1]
