"""The "Review labels" widget: a keyboard-driven queue of likely-wrong cell labels for an expert.

It stacks the project bar (project, label issues, annotator), the queue's filters, the queue with the cell
on show (keys in :mod:`napari_hematology.widgets.review_queue`), and retraining from the fixes.
"""

from __future__ import annotations

from qtpy.QtWidgets import QWidget

from napari_hematology.widgets._keys import TRAIN, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import scrolling_layout
from napari_hematology.widgets._runner import TaskRunner
from napari_hematology.widgets.review_project import ProjectBar
from napari_hematology.widgets.review_queue import QueueFilters, ReviewQueue


class ReviewLabelsWidget(QWidget):
    """Review likely-wrong labels one cell at a time, with keys, and retrain from the fixes."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = TaskRunner()
        self.project_bar = ProjectBar(self.runner)
        self.filters = QueueFilters()
        self.review_queue = ReviewQueue(napari_viewer, self.project_bar, self.filters)
        self.retrain_button = shortcut_button("Retrain", TRAIN, self.retrain)
        self.project_bar.changed.connect(self.review_queue.refresh)
        self.filters.changed.connect(self.review_queue.refresh)
        layout = scrolling_layout(self)
        for widget in (self.project_bar, self.filters, self.review_queue, self.retrain_button, self.runner):
            layout.addWidget(widget)
        layout.addStretch()
        bind_button_keys(self)

    def retrain(self) -> None:
        """Re-run cross-validated detection on the corrected labels in the background; then refresh."""
        from napari_hematology.core.labels.review import retrain_project

        if self.project_bar.require_project():
            self.runner.start(retrain_project, self.project_bar.project, on_done=self._retrained)

    def _retrained(self, issues) -> None:
        from napari.utils.notifications import show_info

        show_info(f"Retrained: {int(issues['is_issue'].sum())} of {len(issues)} labels still look wrong.")
        self.review_queue.refresh()
