"""The Expression widget: train an expression classifier and show its latent map and confusion matrix."""

from __future__ import annotations

from pathlib import Path

import napari
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_hematology.core.errors import HematologyError
from napari_hematology.core.expression.choices import ENCODERS, HEAD_CHOICES, SMALL_COHORT_CELLS, VALUE_KINDS
from napari_hematology.widgets._runner import TaskRunner, report_error, shortcut_button

FILE_FILTER = "Expression data (*.h5ad *.csv *.tsv *.h5)"
POINT_SIZE = 0.4


class ExpressionWidget(QWidget):
    """Load an expression file, pick the label column, train, and map the latent of every cell."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.data = None
        self.model = None
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText(".h5ad, .csv, .tsv or 10x .h5 file")
        self.browse_button = shortcut_button("Open… (Ctrl+O)", "Ctrl+O", self._browse)
        self.path_edit.returnPressed.connect(self.load_data)
        self.label_combo = QComboBox()
        self.encoder_combo = _combo(ENCODERS)
        self.head_combo = _combo(HEAD_CHOICES)
        self.head_combo.setToolTip(f"auto: linear with fewer than {SMALL_COHORT_CELLS} labelled cells, "
                                   "else ffn")
        self.values_combo = _combo(VALUE_KINDS)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 500)
        self.epochs_spin.setValue(15)
        self.train_button = shortcut_button("Train (Ctrl+T)", "Ctrl+T", self.train)
        self.save_button = shortcut_button("Save model… (Ctrl+S)", "Ctrl+S", self._save_model)
        self.apply_button = shortcut_button("Apply saved model… (Ctrl+M)", "Ctrl+M", self._apply_saved_model)
        self.confusion = QTableWidget()
        self.runner = TaskRunner(self)
        self._build_layout()

    def _build_layout(self) -> None:
        file_row = QHBoxLayout()
        file_row.addWidget(self.path_edit)
        file_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Label column", self.label_combo)
        form.addRow("Values", self.values_combo)
        form.addRow("Encoder (pretext)", self.encoder_combo)
        form.addRow("Head", self.head_combo)
        form.addRow("Pretraining epochs", self.epochs_spin)
        buttons = QHBoxLayout()
        for button in (self.train_button, self.save_button, self.apply_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(file_row)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.runner)
        layout.addWidget(self.confusion)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open expression data", "", FILE_FILTER)
        if path:
            self.path_edit.setText(path)
            self.load_data()

    def load_data(self) -> None:
        """Read the file named in the path box and offer its annotation columns as labels."""
        from napari_hematology.core.expression import annotation_columns, load_expression

        try:
            self.data = load_expression(self.path_edit.text().strip())
        except HematologyError as error:
            report_error(error)
            return
        self.label_combo.clear()
        self.label_combo.addItems(annotation_columns(self.data))
        if self.data.matrix.min() < 0:
            self.values_combo.setCurrentText("normalized")
        show_info(f"{self.data.name}: {self.data.n_cells} cells x {self.data.n_genes} genes.")

    def train(self) -> None:
        """Fit a classifier on the loaded data in the background, then show its map."""
        from napari_hematology.core.expression import ExpressionConfig
        from napari_hematology.core.expression.maps import fit_and_map

        if not self._has_data() or not self.label_combo.currentText():
            show_info("Pick a label column first (the file needs an annotation column).")
            return
        try:
            config = ExpressionConfig.from_options(
                self.encoder_combo.currentText(), self.head_combo.currentText(),
                self.values_combo.currentText(), pretrain_epochs=self.epochs_spin.value(),
            )
        except HematologyError as error:
            report_error(error)
            return
        self.runner.start(fit_and_map, self.data, self.label_combo.currentText(), config,
                          on_done=self._show_fit)

    def _has_data(self) -> bool:
        if self.data is None:
            show_info("Load an expression file first (Open…).")
        return self.data is not None

    def _show_fit(self, result) -> None:
        self.model, view = result
        self._show_map(view)

    def _apply_saved_model(self) -> None:
        if not self._has_data():
            return
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if folder:
            self.apply_model(folder)

    def apply_model(self, folder: str | Path) -> None:
        """Apply a saved model unchanged to the loaded data (zero-shot transfer) and show its map."""
        from napari_hematology.core.expression import load_expression_model
        from napari_hematology.core.expression.maps import latent_map

        try:
            self.model = load_expression_model(folder)
        except HematologyError as error:
            report_error(error)
            return
        label_key = self.label_combo.currentText() or None
        self.runner.start(latent_map, self.model, self.data, label_key, on_done=self._show_map)

    def _save_model(self) -> None:
        from napari_hematology.core.expression import save_expression_model

        if self.model is None:
            show_info("Train or apply a model first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Save model into folder")
        if folder:
            save_expression_model(self.model, folder)
            show_info(f"Model saved to {folder}.")

    def _show_map(self, view) -> None:
        name = f"{self.data.name} latent map"
        color_by = "label" if "label" in view.features.columns else "predicted"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_points(
            view.coordinates[:, ::-1], features=view.features, face_color=color_by,
            size=POINT_SIZE * float(view.coordinates.std() or 1.0), name=name,
        )
        self._show_confusion(view.confusion)
        for note in self.data.notes:
            show_info(note)

    def _show_confusion(self, confusion) -> None:
        if confusion is None:
            self.confusion.clear()
            self.confusion.setRowCount(0)
            self.confusion.setColumnCount(0)
            return
        self.confusion.setRowCount(confusion.shape[0])
        self.confusion.setColumnCount(confusion.shape[1])
        self.confusion.setVerticalHeaderLabels([f"true {name}" for name in confusion.index])
        self.confusion.setHorizontalHeaderLabels([str(name) for name in confusion.columns])
        for row, values in enumerate(confusion.to_numpy()):
            for column, count in enumerate(values):
                self.confusion.setItem(row, column, QTableWidgetItem(str(int(count))))


def _combo(items: tuple[str, ...]) -> QComboBox:
    combo = QComboBox()
    combo.addItems(list(items))
    return combo
