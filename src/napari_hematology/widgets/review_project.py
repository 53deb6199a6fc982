"""The project bar of the Review labels widget: the project file, the label issues in it, the annotator."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_hematology.core.errors import HematologyError
from napari_hematology.widgets._keys import OPEN, key_text, shortcut_button
from napari_hematology.widgets._layout import form_layout, note
from napari_hematology.widgets._runner import TaskRunner, report_error


class ProjectBar(QWidget):
    """Open a project, fill it with label issues (loaded, or found in the background) and name the annotator.

    ``changed`` is emitted when a project is opened, issues are stored in it or the annotator is named.
    """

    changed = Signal()

    def __init__(self, runner: TaskRunner) -> None:
        super().__init__()
        self.runner = runner
        self.project: Path | None = None
        self.project_label = note("No project open.")
        self.open_button = shortcut_button("Open project…", OPEN, self._choose_project)
        self.issues_button = QPushButton("Load issues CSV…")
        self.issues_button.clicked.connect(self._choose_issues)
        self.find_button = QPushButton("Find issues in cells CSV…")
        self.find_button.clicked.connect(self._choose_cells)
        self.annotator = QLineEdit()
        self.annotator.setPlaceholderText("your name (required)")
        self.annotator.editingFinished.connect(self.changed)
        self._lay_out()

    def _lay_out(self) -> None:
        files = QVBoxLayout()
        files.addWidget(self.open_button)
        files.addWidget(self.issues_button)
        form = form_layout()
        form.addRow("Annotator", self.annotator)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.project_label)
        layout.addLayout(files)
        layout.addWidget(self.find_button)
        layout.addLayout(form)

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
        """Open (or create) a project file."""
        from napari_hematology.core.labels.store import AnnotationStore

        try:
            AnnotationStore(path).close()
        except HematologyError as error:
            report_error(error)
            return
        self.project = Path(path)
        self.project_label.setText(f"Project: {self.project.name}")
        self.changed.emit()

    def open_store(self):
        """Open the project's annotation store (the project must exist); use it as a context manager."""
        from napari_hematology.core.labels.store import AnnotationStore

        return AnnotationStore(self.project, create=False)

    def require_project(self) -> bool:
        """Tell whether a project is open, asking the user to open one when not."""
        from napari.utils.notifications import show_info

        if self.project is None:
            show_info(f"Open or create a project first (Open project…, {key_text(OPEN)}).")
            return False
        return True

    # issues -----------------------------------------------------------------------------------------

    def load_issues(self, path: str | Path) -> None:
        """Store a ``label-issues`` table in the project."""
        from napari_hematology.core.io import read_table
        from napari_hematology.core.labels.issues import ISSUE_COLUMNS

        if not self.require_project():
            return
        try:
            issues = read_table(path, required=ISSUE_COLUMNS)
        except HematologyError as error:
            report_error(error)
            return
        self._store_issues(issues, Path(path).parent)

    def find_issues(self, cells_csv: str | Path) -> None:
        """Run label-issue detection on a cells CSV in the background, then store the result."""
        from napari_hematology.core.labels.issues import find_label_issues

        if self.require_project():
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
        self.changed.emit()

    # annotator --------------------------------------------------------------------------------------

    def annotator_name(self) -> str:
        """The annotator's name as typed (empty when none)."""
        return self.annotator.text().strip()

    def annotator_or_warn(self) -> str | None:
        """The annotator's name, or None after asking the user to type it."""
        from napari.utils.notifications import show_info

        name = self.annotator_name()
        if not name:
            show_info("Type your name in 'Annotator' first: every decision is recorded with it.")
            self.annotator.setFocus()
            return None
        return name
