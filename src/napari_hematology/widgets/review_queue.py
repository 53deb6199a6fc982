"""The review queue of the Review labels widget: its order and filters, and the keys that record decisions.

Keys (with the crop or a queue button focused): 1-9 set the class, Enter accepts the suggestion, Backspace
undoes the last decision, Left/Right move in the queue. Every decision is written to the project at once.
Keys typed in other fields (the annotator's name, the filters) never reach the queue.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_hematology.core.errors import HematologyError
from napari_hematology.core.labels.review import ORDERS
from napari_hematology.widgets._layout import form_layout
from napari_hematology.widgets._runner import report_error
from napari_hematology.widgets.review_cell import CellView
from napari_hematology.widgets.review_project import ProjectBar

ALL_CLASSES = "all classes"


def _key_code(key) -> int:
    """Qt key as an int (PyQt6 keys are enums, PyQt5 keys ints)."""
    return int(getattr(key, "value", key))


class QueueFilters(QWidget):
    """Order of the queue, and which cells it keeps; ``changed`` is emitted on every change."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.order = QComboBox()
        self.order.addItems(ORDERS)
        self.class_filter = QComboBox()
        self.class_filter.addItem(ALL_CLASSES)
        self.min_score = QDoubleSpinBox()
        self.min_score.setRange(0.0, 1.0)
        self.min_score.setSingleStep(0.05)
        for control in (self.order, self.class_filter):
            control.currentIndexChanged.connect(self.changed)
        self.min_score.valueChanged.connect(self.changed)
        form = form_layout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Order", self.order)
        form.addRow("Class", self.class_filter)
        form.addRow("Min. issue score", self.min_score)

    def criteria(self) -> dict:
        """The ``order``, ``classes`` and ``min_score`` arguments of ``review_queue``."""
        chosen = self.class_filter.currentText()
        return {
            "order": self.order.currentText(),
            "classes": None if chosen == ALL_CLASSES else [chosen],
            "min_score": self.min_score.value(),
        }

    def set_classes(self, classes: list[str]) -> None:
        """Offer the project's classes in the class filter, keeping the choice when it still exists."""
        existing = [self.class_filter.itemText(i) for i in range(1, self.class_filter.count())]
        if existing == classes:
            return
        self.class_filter.blockSignals(True)
        chosen = self.class_filter.currentText()
        self.class_filter.clear()
        self.class_filter.addItems([ALL_CLASSES, *classes])
        self.class_filter.setCurrentText(chosen if chosen in classes else ALL_CLASSES)
        self.class_filter.blockSignals(False)


class ReviewQueue(QWidget):
    """The queue of cells to review, one on show, and the keys and buttons that decide or move."""

    def __init__(self, viewer, project_bar: ProjectBar, filters: QueueFilters) -> None:
        super().__init__()
        self.project_bar = project_bar
        self.filters = filters
        self.queue = None
        self.position = 0
        self.cell_view = CellView(viewer)
        buttons = QGridLayout()
        actions = [
            ("Previous (←)", self.previous_cell),
            ("Next (→)", self.next_cell),
            ("Accept suggestion (Enter)", self.accept_suggestion),
            ("Undo (Backspace)", self.undo),
        ]
        places = [(0, 0, 1, 1), (0, 1, 1, 1), (1, 0, 1, 2), (2, 0, 1, 2)]  # the long ones get a row each
        for (text, slot), place in zip(actions, places, strict=True):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button, *place)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.cell_view)
        layout.addLayout(buttons)

    def refresh(self) -> None:
        """Rebuild the queue from the project with the current order and filters, keeping the cell shown."""
        from napari_hematology.core.labels.review import review_queue

        if self.project_bar.project is None:
            return
        current = self.current_cell()
        try:
            with self.project_bar.open_store() as store:
                classes = store.classes
                self.queue = review_queue(store, self.project_bar.annotator_name(), **self.filters.criteria())
        except HematologyError as error:
            report_error(error)
            return
        self.filters.set_classes(classes)
        self.cell_view.show_classes(classes)
        cells = list(self.queue["cell"])
        self.position = cells.index(current) if current in cells else 0
        self._show_cell()

    def current_cell(self) -> str | None:
        """Name of the cell shown, or None when the queue is empty."""
        if self.queue is None or self.queue.empty:
            return None
        return str(self.queue["cell"].iloc[self.position])

    def _show_cell(self) -> None:
        self.cell_view.show_cell(self.queue, self.position)

    # decisions --------------------------------------------------------------------------------------

    def set_class(self, number: int) -> None:
        """Label the current cell with class ``number`` (1-based, as listed) and move on."""
        with self.project_bar.open_store() as store:
            classes = store.classes
        if 1 <= number <= len(classes):
            self._record(classes[number - 1])

    def accept_suggestion(self) -> None:
        """Label the current cell with the suggested class and move on."""
        from napari.utils.notifications import show_info

        if self.current_cell() is None:
            return
        suggested = self.queue["suggested"].iloc[self.position]
        if not isinstance(suggested, str):
            show_info("This cell has no suggestion; press the key of its class (1-9).")
            return
        self._record(suggested)

    def _record(self, label: str) -> None:
        cell = self.current_cell()
        annotator = self.project_bar.annotator_or_warn()
        if cell is None or annotator is None:
            return
        try:
            with self.project_bar.open_store() as store:
                store.set_label(cell, label, annotator, source="human")
        except HematologyError as error:
            report_error(error)
            return
        self.queue.loc[self.position, ["label", "reviewed"]] = [label, True]
        self.next_cell()
        self.cell_view.crop_view.setFocus()  # the keyboard stays on the queue after a decision

    def undo(self) -> None:
        """Undo this annotator's latest decision and go back to that cell."""
        from napari.utils.notifications import show_info

        if not self.project_bar.require_project():
            return
        annotator = self.project_bar.annotator_or_warn()
        if annotator is None:
            return
        with self.project_bar.open_store() as store:
            cell = store.undo(annotator)
        if cell is None:
            show_info("Nothing to undo.")
            return
        self.refresh()
        cells = list(self.queue["cell"])
        if cell in cells:
            self.position = cells.index(cell)
            self._show_cell()

    # moving -----------------------------------------------------------------------------------------

    def next_cell(self) -> None:
        """Show the next cell of the queue."""
        self._move(1)

    def previous_cell(self) -> None:
        """Show the previous cell of the queue."""
        self._move(-1)

    def _move(self, step: int) -> None:
        if self.queue is None or self.queue.empty:
            return
        self.position = int(np.clip(self.position + step, 0, len(self.queue) - 1))
        self._show_cell()
        focused = QApplication.focusWidget()
        if focused is not None and self.isAncestorOf(focused):  # moved with the keyboard: stay on the crop
            self.cell_view.crop_view.setFocus()

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Review keys: 1-9 class, Enter accept, Backspace undo, Left/Right move."""
        key = _key_code(event.key())
        handlers = {
            _key_code(Qt.Key_Return): self.accept_suggestion,
            _key_code(Qt.Key_Enter): self.accept_suggestion,
            _key_code(Qt.Key_Backspace): self.undo,
            _key_code(Qt.Key_Left): self.previous_cell,
            _key_code(Qt.Key_Right): self.next_cell,
        }
        if _key_code(Qt.Key_1) <= key <= _key_code(Qt.Key_9) and self.project_bar.project is not None:
            self.set_class(key - _key_code(Qt.Key_0))
        elif key in handlers:
            handlers[key]()
        else:
            super().keyPressEvent(event)
