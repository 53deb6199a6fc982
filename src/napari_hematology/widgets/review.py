"""The "Review labels" widget: a keyboard-driven queue of likely-wrong cell labels for an expert.

Keys (with the crop view focused): 1-9 set the class, Enter accepts the suggestion, Backspace undoes the
last decision, Left/Right move in the queue. Every decision is written to the project file at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_hematology.core.errors import HematologyError
from napari_hematology.widgets._runner import TaskRunner, report_error, shortcut_button

ALL_CLASSES = "all classes"
CROP_PIXELS = 256
FOCUS_ZOOM = 4.0


def _key_code(key) -> int:
    """Qt key as an int (PyQt6 keys are enums, PyQt5 keys ints)."""
    return int(getattr(key, "value", key))


class _CropView(QLabel):
    """The large crop; focusable so the review keys reach the widget."""

    def __init__(self) -> None:
        super().__init__("Open a project and load a label-issues table.")
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(CROP_PIXELS, CROP_PIXELS)
        self.setStyleSheet("border: 1px solid gray;")

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.setFocus()
        super().mousePressEvent(event)


class ReviewLabelsWidget(QWidget):
    """Review likely-wrong labels one cell at a time, with keys, and retrain from the fixes."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Path | None = None
        self.queue = None
        self.position = 0
        self._build()

    # layout -----------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.project_label = QLabel("No project open.")
        self.open_button = shortcut_button("Open project… (Ctrl+O)", "Ctrl+O", self._choose_project)
        self.issues_button = QPushButton("Load issues CSV…")
        self.issues_button.clicked.connect(self._choose_issues)
        self.find_button = QPushButton("Find issues in cells CSV…")
        self.find_button.clicked.connect(self._choose_cells)
        self.annotator = QLineEdit()
        self.annotator.setPlaceholderText("your name (required)")
        self.annotator.editingFinished.connect(self.refresh)
        self.order = QComboBox()
        self.order.addItems(["issue_score", "uncertainty", "random"])
        self.class_filter = QComboBox()
        self.class_filter.addItem(ALL_CLASSES)
        self.min_score = QDoubleSpinBox()
        self.min_score.setRange(0.0, 1.0)
        self.min_score.setSingleStep(0.05)
        for control in (self.order, self.class_filter):
            control.currentIndexChanged.connect(self.refresh)
        self.min_score.valueChanged.connect(self.refresh)

        form = QFormLayout()
        form.addRow("Annotator", self.annotator)
        form.addRow("Order", self.order)
        form.addRow("Class", self.class_filter)
        form.addRow("Min. issue score", self.min_score)

        self.crop_view = _CropView()
        self.cell_label = QLabel("")
        self.cell_label.setWordWrap(True)
        self.counter = QLabel("0 / 0 reviewed")
        self.keys_label = QLabel("")
        self.keys_label.setWordWrap(True)

        buttons = QGridLayout()
        actions = [
            ("Previous (←)", self.previous_cell),
            ("Next (→)", self.next_cell),
            ("Accept suggestion (Enter)", self.accept_suggestion),
            ("Undo (Backspace)", self.undo),
        ]
        for index, (text, slot) in enumerate(actions):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button, index // 2, index % 2)
        self.retrain_button = shortcut_button("Retrain (Ctrl+R)", "Ctrl+R", self.retrain)
        self.runner = TaskRunner()

        files = QHBoxLayout()
        files.addWidget(self.open_button)
        files.addWidget(self.issues_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.project_label)
        layout.addLayout(files)
        layout.addWidget(self.find_button)
        layout.addLayout(form)
        layout.addWidget(self.crop_view)
        layout.addWidget(self.cell_label)
        layout.addWidget(self.counter)
        layout.addWidget(self.keys_label)
        layout.addLayout(buttons)
        layout.addWidget(self.retrain_button)
        layout.addWidget(self.runner)
        layout.addStretch()

    # files ------------------------------------------------------------------------------------------

    def _choose_project(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Open or create a project",
            "",
            "Projects (*.sqlite)",
            options=QFileDialog.DontConfirmOverwrite,
        )
        if path:
            self.open_project(path)

    def _choose_issues(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Label-issues table", "", "CSV (*.csv)")
        if path:
            self.load_issues(path)

    def _choose_cells(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cells table (image,label)", "", "CSV (*.csv)")
        if path:
            self.find_issues(path)

    def open_project(self, path: str | Path) -> None:
        """Open (or create) a project file and show its queue."""
        from napari_hematology.core.labels.store import AnnotationStore

        try:
            AnnotationStore(path).close()
        except HematologyError as error:
            report_error(error)
            return
        self.project = Path(path)
        self.project_label.setText(f"Project: {self.project.name}")
        self.refresh()

    def _require_project(self) -> bool:
        from napari.utils.notifications import show_info

        if self.project is None:
            show_info("Open or create a project first (Ctrl+O).")
            return False
        return True

    def load_issues(self, path: str | Path) -> None:
        """Store a ``label-issues`` table in the project and refresh the queue."""
        from napari_hematology.core.io import read_table
        from napari_hematology.core.labels.issues import ISSUE_COLUMNS

        if not self._require_project():
            return
        try:
            issues = read_table(path, required=ISSUE_COLUMNS)
        except HematologyError as error:
            report_error(error)
            return
        self._store_issues(issues, Path(path).parent)

    def find_issues(self, cells_csv: str | Path) -> None:
        """Run label-issue detection on a cells CSV in the background, then load the result."""
        from napari_hematology.core.labels.issues import find_label_issues

        if self._require_project():
            base = Path(cells_csv).parent
            self.runner.start(
                find_label_issues, Path(cells_csv), on_done=lambda issues: self._store_issues(issues, base)
            )

    def _store_issues(self, issues, base: Path) -> None:
        from napari_hematology.core.labels.review import store_issues

        try:
            store_issues(self.project, issues, base=base)
        except HematologyError as error:
            report_error(error)
            return
        self.refresh()

    # queue ------------------------------------------------------------------------------------------

    def _store(self):
        from napari_hematology.core.labels.store import AnnotationStore

        return AnnotationStore(self.project, create=False)

    def refresh(self) -> None:
        """Rebuild the queue from the project with the current order and filters, keeping the cell shown."""
        from napari_hematology.core.labels.review import review_queue

        if self.project is None:
            return
        current = self.current_cell()
        chosen = self.class_filter.currentText()
        try:
            with self._store() as store:
                classes = store.classes
                self.queue = review_queue(
                    store,
                    self.annotator.text().strip(),
                    order=self.order.currentText(),
                    classes=None if chosen == ALL_CLASSES else [chosen],
                    min_score=self.min_score.value(),
                )
        except HematologyError as error:
            report_error(error)
            return
        self._update_class_filter(classes)
        self.keys_label.setText("  ".join(f"{key} {name}" for key, name in enumerate(classes[:9], start=1)))
        cells = list(self.queue["cell"])
        self.position = cells.index(current) if current in cells else 0
        self._show_cell()

    def _update_class_filter(self, classes: list[str]) -> None:
        existing = [self.class_filter.itemText(i) for i in range(1, self.class_filter.count())]
        if existing != classes:
            self.class_filter.blockSignals(True)
            chosen = self.class_filter.currentText()
            self.class_filter.clear()
            self.class_filter.addItems([ALL_CLASSES, *classes])
            self.class_filter.setCurrentText(chosen if chosen in classes else ALL_CLASSES)
            self.class_filter.blockSignals(False)

    def current_cell(self) -> str | None:
        """Name of the cell shown, or None when the queue is empty."""
        if self.queue is None or self.queue.empty:
            return None
        return str(self.queue["cell"].iloc[self.position])

    def _show_cell(self) -> None:
        total = 0 if self.queue is None else len(self.queue)
        reviewed = 0 if self.queue is None else int(self.queue["reviewed"].sum())
        self.counter.setText(f"{reviewed} / {total} reviewed")
        if not total:
            self.crop_view.setText("No cells in the queue (check the filters).")
            self.cell_label.setText("")
            return
        row = self.queue.iloc[self.position]
        yours = row["label"] if isinstance(row["label"], str) else "—"
        self.cell_label.setText(
            f"Cell {self.position + 1} of {total}: {Path(str(row['cell'])).name}\n"
            f"Given: {row['given']}   Suggested: {row['suggested']} (issue score {row['issue_score']:.2f})\n"
            f"Your label: {yours}"
        )
        self._show_crop(row["crop"])
        self._centre_viewer(row)
        self.crop_view.setFocus()

    def _show_crop(self, crop) -> None:
        from napari_hematology.core.io import read_image, to_rgb8

        if not isinstance(crop, str):
            self.crop_view.setText("(no crop for this cell)")
            return
        try:
            rgb, _ = to_rgb8(np.asarray(read_image(crop, lazy=False).data), name=Path(crop).name)
        except HematologyError as error:
            self.crop_view.setText(str(error))
            return
        rgb = np.ascontiguousarray(rgb)
        image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format_RGB888)
        pixmap = QPixmap.fromImage(image.copy()).scaled(CROP_PIXELS, CROP_PIXELS, Qt.KeepAspectRatio)
        self.crop_view.setPixmap(pixmap)

    def _centre_viewer(self, row) -> None:
        """Show the cell's slide in the viewer, centred on the cell, when the project knows where it lies."""
        if not isinstance(row["image"], str) or not np.isfinite([row["x"], row["y"]]).all():
            return
        layer = self._slide_layer(row["image"])
        if layer is None:
            return
        self.viewer.camera.center = (float(row["y"]), float(row["x"]))
        self.viewer.camera.zoom = FOCUS_ZOOM
        marker = "review cell"
        if marker in self.viewer.layers:
            self.viewer.layers[marker].data = [[row["y"], row["x"]]]
        else:
            self.viewer.add_points(
                [[row["y"], row["x"]]], name=marker, size=40, face_color="transparent", border_color="yellow"
            )

    def _slide_layer(self, image: str):
        from napari_hematology.core.io import read_image

        name = Path(image).stem
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        try:
            slide = read_image(image)
        except HematologyError as error:
            report_error(error)
            return None
        data = slide.levels if slide.is_multiscale else slide.data
        return self.viewer.add_image(data, name=name, rgb=True, multiscale=slide.is_multiscale)

    # actions ----------------------------------------------------------------------------------------

    def _annotator_or_warn(self) -> str | None:
        from napari.utils.notifications import show_info

        name = self.annotator.text().strip()
        if not name:
            show_info("Type your name in 'Annotator' first: every decision is recorded with it.")
            self.annotator.setFocus()
            return None
        return name

    def set_class(self, number: int) -> None:
        """Label the current cell with class ``number`` (1-based, as listed) and move on."""
        with self._store() as store:
            classes = store.classes
        if 1 <= number <= len(classes):
            self._record(classes[number - 1])

    def accept_suggestion(self) -> None:
        """Label the current cell with the suggested class and move on."""
        if self.current_cell() is not None:
            self._record(str(self.queue["suggested"].iloc[self.position]))

    def _record(self, label: str) -> None:
        cell = self.current_cell()
        annotator = self._annotator_or_warn()
        if cell is None or annotator is None:
            return
        try:
            with self._store() as store:
                store.set_label(cell, label, annotator, source="human")
        except HematologyError as error:
            report_error(error)
            return
        self.queue.loc[self.position, ["label", "reviewed"]] = [label, True]
        self.next_cell()

    def undo(self) -> None:
        """Undo this annotator's latest decision and go back to that cell."""
        from napari.utils.notifications import show_info

        annotator = self._annotator_or_warn()
        if annotator is None or self.project is None:
            return
        with self._store() as store:
            cell = store.undo(annotator)
        if cell is None:
            show_info("Nothing to undo.")
            return
        self.refresh()
        cells = list(self.queue["cell"])
        if cell in cells:
            self.position = cells.index(cell)
            self._show_cell()

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

    def retrain(self) -> None:
        """Re-run cross-validated detection on the corrected labels in the background; then refresh."""
        from napari_hematology.core.labels.review import retrain_project

        if self._require_project():
            self.runner.start(retrain_project, self.project, on_done=self._retrained)

    def _retrained(self, issues) -> None:
        from napari.utils.notifications import show_info

        show_info(f"Retrained: {int(issues['is_issue'].sum())} of {len(issues)} labels still look wrong.")
        self.refresh()

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
        if _key_code(Qt.Key_1) <= key <= _key_code(Qt.Key_9) and self.project is not None:
            self.set_class(key - _key_code(Qt.Key_0))
        elif key in handlers:
            handlers[key]()
        else:
            super().keyPressEvent(event)
