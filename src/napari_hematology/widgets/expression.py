"""The Expression widget: train an expression classifier and show its latent map and confusion matrix.

The map is a Points layer coloured with the plugin's categorical palette (one colour per class, the same
for the labels and the predictions) with a legend; the confusion matrix, of held-out cells after Train, is
a heatmap in the dock (``_plot``) with the class names on both axes and the count in each cell.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QSpinBox, QWidget

from napari_hematology.core.errors import HematologyError
from napari_hematology.core.expression.choices import ENCODERS, HEAD_CHOICES, SMALL_COHORT_CELLS, VALUE_KINDS
from napari_hematology.widgets._keys import APPLY_MODEL, OPEN, RUN, SAVE, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import fit_names, form_layout, scrolling_layout
from napari_hematology.widgets._legend import Legend
from napari_hematology.widgets._palette import category_colours
from napari_hematology.widgets._plot import PlotArea, count_heatmap
from napari_hematology.widgets._runner import TaskRunner, report_error

FILE_FILTER = "Expression data (*.h5ad *.csv *.tsv *.h5)"
# point diameter as a share of the map's larger side: about 100 points side by side
POINT_FRACTION = 0.01
UNLABELLED = "unlabelled"


class ExpressionWidget(QWidget):
    """Load an expression file, pick the label column, train, and map the latent of every cell."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.data = None
        self.model = None
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText(".h5ad, .csv, .tsv or 10x .h5 file")
        self.browse_button = shortcut_button("Open…", OPEN, self._browse)
        self.path_edit.returnPressed.connect(self.load_data)
        self.label_combo = fit_names(QComboBox())
        self.encoder_combo = _combo(ENCODERS)
        self.head_combo = _combo(HEAD_CHOICES)
        self.head_combo.setToolTip(f"auto: linear with fewer than {SMALL_COHORT_CELLS} labelled cells, "
                                   "else ffn")
        self.values_combo = _combo(VALUE_KINDS)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 500)
        self.epochs_spin.setValue(15)
        self.train_button = shortcut_button("Train", RUN, self.train)
        self.save_button = shortcut_button("Save model…", SAVE, self._save_model)
        self.apply_button = shortcut_button("Apply saved model…", APPLY_MODEL, self._apply_saved_model)
        self.legend = Legend()
        self.legend.hide()
        self.scored_on = QLabel("")
        self.scored_on.setWordWrap(True)
        self.confusion = PlotArea()
        self.runner = TaskRunner(self)
        self._build_layout()
        bind_button_keys(self)

    def _build_layout(self) -> None:
        file_row = QHBoxLayout()
        file_row.addWidget(self.path_edit)
        file_row.addWidget(self.browse_button)
        form = form_layout()
        form.addRow("Label column", self.label_combo)
        form.addRow("Values", self.values_combo)
        form.addRow("Encoder (pretext)", self.encoder_combo)
        form.addRow("Head", self.head_combo)
        form.addRow("Pretraining epochs", self.epochs_spin)
        layout = scrolling_layout(self)
        layout.addLayout(file_row)
        layout.addLayout(form)
        for widget in (self.train_button, self.save_button, self.apply_button, self.runner, self.legend,
                       self.scored_on, self.confusion):
            layout.addWidget(widget)
        layout.addStretch()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open expression data", "", FILE_FILTER)
        if path:
            self.path_edit.setText(path)
            self.load_data()

    def load_data(self) -> None:
        """Read the file named in the path box in the background, then offer its annotation columns."""
        self.runner.start(_read_expression, self.path_edit.text().strip(), on_done=self._show_data)

    def _show_data(self, loaded) -> None:
        from napari_hematology.core.expression import annotation_columns

        self.data = loaded
        self.label_combo.clear()
        self.label_combo.addItems(annotation_columns(self.data))
        if self.data.matrix.min() < 0:
            self.values_combo.setCurrentText("normalized")
        show_info(f"{self.data.name}: {self.data.n_cells} cells x {self.data.n_genes} genes.")

    def train(self) -> None:
        """Fit a classifier on the loaded data in the background, then show its map."""
        from napari_hematology.core.expression import ExpressionConfig
        from napari_hematology.core.expression.maps import fit_and_map

        if not self._has_data():
            return
        if not self.label_combo.currentText():
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
        values = view.features[color_by].replace("", UNLABELLED)
        present = set(values)
        colours = category_colours(list(dict.fromkeys([*self.model.classes, *sorted(present)])))
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        extent = float(np.ptp(view.coordinates, axis=0).max()) or 1.0
        self.viewer.add_points(
            view.coordinates[:, ::-1], features=view.features, face_color=[colours[v] for v in values],
            border_width=0, size=POINT_FRACTION * extent, name=name,
        )
        self.legend.title = f"{name}, colour = {color_by}:"
        self.legend.set_colours({value: colours[value] for value in colours if value in present})
        self._show_confusion(view)
        for note in self.data.notes:
            show_info(note)

    def _show_confusion(self, view) -> None:
        confusion = view.confusion
        if confusion is None:
            self.scored_on.setText("")
            self.confusion.clear()
            return
        self.scored_on.setText(f"Confusion matrix of {view.scored_on}.")
        rows, columns = [str(n) for n in confusion.index], [str(n) for n in confusion.columns]
        counts = confusion.to_numpy()
        self.confusion.plot(lambda figure: count_heatmap(
            figure, counts, rows, columns, "cells",
            title=f"Confusion matrix, {int(counts.sum())} cells", x="predicted class", y="true class",
        )[1])


def _read_expression(path: str, **_callbacks):
    """Read an expression file in the runner's worker (the expression package is imported there too)."""
    from napari_hematology.core.expression import load_expression

    return load_expression(path)


def _combo(items: tuple[str, ...]) -> QComboBox:
    combo = QComboBox()
    combo.addItems(list(items))
    return combo
