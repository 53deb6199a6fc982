"""The "Slide prediction" dock widget: slide-level class (e.g. genetic subtype) from the cells of an image.

Predict: pick the image and its cell labels (from blast detection) and a bag model; the dock shows the
class probabilities as bars, the cells are coloured by attention, and a gallery of the highest-attention
cells jumps the viewer to a cell when clicked. Train: a table of cell crops with slide labels (BAGS.csv)
trains a new bag model. All the work is done by :mod:`napari_hematology.core.slides`.
"""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_hematology.widgets._runner import TaskRunner, shortcut_button

GALLERY_SIZE = 12
THUMBNAIL = 72
ENCODERS = ("cell_classifier", "descriptors")


class SlidePredictionWidget(QWidget):
    """Predict a slide's class from its cells with a bag (attention MIL) model, or train one."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = TaskRunner()
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("bag model folder (from 'mil train')")
        self.predict_button = shortcut_button("Predict (Ctrl+R)", "Ctrl+R", self.predict)
        self.result_label = QLabel("")
        self.bars = QFormLayout()
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.ViewMode.IconMode)
        self.gallery.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.gallery.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.gallery.itemClicked.connect(self.jump_to_cell)
        self.table_edit = QLineEdit()
        self.table_edit.setPlaceholderText("BAGS.csv: bag, image, label")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("folder for the new model")
        self.encoder_combo = QComboBox()
        self.encoder_combo.addItems(ENCODERS)
        self.blasts_only = QCheckBox("Only predicted blasts")
        self.branch_per_class = QCheckBox("One attention branch per class")
        self.train_button = shortcut_button("Train (Ctrl+T)", "Ctrl+T", self.train)
        layout = QVBoxLayout(self)
        layout.addWidget(self._predict_box())
        layout.addWidget(self._train_box())
        layout.addWidget(self.runner)
        self._labels_layer: Labels | None = None
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    def _predict_box(self) -> QGroupBox:
        box = QGroupBox("Predict")
        form = QFormLayout(box)
        form.addRow("Image", self.image_combo)
        form.addRow("Cell labels", self.labels_combo)
        form.addRow("Model", _with_browse(self.model_edit, self._choose_model))
        form.addRow(self.predict_button)
        form.addRow(self.result_label)
        form.addRow(self.bars)
        form.addRow(QLabel("Highest-attention cells (click to go there)"))
        form.addRow(self.gallery)
        return box

    def _train_box(self) -> QGroupBox:
        box = QGroupBox("Train")
        form = QFormLayout(box)
        form.addRow("Slides table", _with_browse(self.table_edit, self._choose_table))
        form.addRow("Save model to", _with_browse(self.out_edit, self._choose_out))
        form.addRow("Cell encoder", self.encoder_combo)
        form.addRow(self.blasts_only)
        form.addRow(self.branch_per_class)
        form.addRow(self.train_button)
        return box

    def _refresh_layers(self, event=None) -> None:
        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, kind)])
            if current:
                combo.setCurrentText(current)

    def _choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Bag model folder")
        if folder:
            self.model_edit.setText(folder)

    def _choose_table(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Slides table", filter="CSV (*.csv)")
        if path:
            self.table_edit.setText(path)

    def _choose_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the model to")
        if folder:
            self.out_edit.setText(folder)

    # ------------------------------------------------------------------------------------- predict

    def predict(self) -> None:
        """Predict the class of the chosen image from its labelled cells."""
        from napari_hematology.core.slides.prediction import predict_cells

        image = self._layer(self.image_combo, Image)
        labels = self._layer(self.labels_combo, Labels)
        if image is None or labels is None:
            show_error("Choose an image and its cell labels (run Blast detection first).")
            return
        if not self.model_edit.text().strip():
            show_error("Choose a bag model folder (train one below, or with 'napari-hematology mil train').")
            return
        self._labels_layer = labels
        self.runner.start(
            predict_cells,
            _full_resolution(image),
            _full_resolution(labels),
            self.model_edit.text().strip(),
            name=image.name,
            on_done=self._show_prediction,
        )

    def _layer(self, combo: QComboBox, kind: type):
        matches = [layer for layer in self.viewer.layers if layer.name == combo.currentText()]
        return matches[0] if matches and isinstance(matches[0], kind) else None

    def _show_prediction(self, result) -> None:
        labels = self._labels_layer
        self.result_label.setText(f"Predicted: <b>{result.predicted}</b>")
        self._show_bars(result.probabilities)
        labels.features = result.cells
        self._show_attention(labels, result.cells)
        self._fill_gallery(result.cells)
        show_info(f"Slide predicted as {result.predicted} ({result.probabilities[result.predicted]:.0%}).")

    def _show_bars(self, probabilities: dict[str, float]) -> None:
        while self.bars.rowCount():
            self.bars.removeRow(0)
        for name, probability in sorted(probabilities.items(), key=lambda item: -item[1]):
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(round(probability * 1000))
            bar.setFormat(f"{probability:.1%}")
            self.bars.addRow(name, bar)

    def _show_attention(self, labels: Labels, cells) -> None:
        data = np.asarray(_full_resolution(labels))
        scores = cells.dropna(subset=["attention"])
        lookup = np.zeros(int(data.max()) + 1, dtype=np.float32)
        lookup[scores["label"].to_numpy()] = scores["attention"].to_numpy() * len(scores)
        name = f"{labels.name} attention"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(
            lookup[data],
            name=name,
            colormap="magma",
            opacity=0.6,
            blending="additive",
            contrast_limits=(0.0, max(float(lookup.max()), 1e-6)),
        )

    def _fill_gallery(self, cells) -> None:
        self.gallery.clear()
        image = np.asarray(_full_resolution(self._layer(self.image_combo, Image)))
        top = cells.dropna(subset=["attention"]).nlargest(GALLERY_SIZE, "attention")
        for row in top.itertuples():
            item = QListWidgetItem(_thumbnail(image, row.centroid_y, row.centroid_x), f"{row.attention:.2f}")
            item.setData(Qt.ItemDataRole.UserRole, (int(row.label), row.centroid_y, row.centroid_x))
            self.gallery.addItem(item)

    def jump_to_cell(self, item: QListWidgetItem) -> None:
        """Centre the viewer on the gallery item's cell and select it."""
        label, y, x = item.data(Qt.ItemDataRole.UserRole)
        camera = self.viewer.scene.camera
        camera.center = (y, x)
        camera.zoom = max(camera.zoom, 2.0)
        if self._labels_layer is not None:
            self._labels_layer.selected_label = label

    # --------------------------------------------------------------------------------------- train

    def train(self) -> None:
        """Train a bag model from the slides table."""
        from napari_hematology.core.slides.bags import MilConfig
        from napari_hematology.core.slides.fitting import train_from_table

        table, out = self.table_edit.text().strip(), self.out_edit.text().strip()
        if not table or not out:
            show_error("Choose the slides table (BAGS.csv) and a folder for the model.")
            return
        config = MilConfig(
            encoder=self.encoder_combo.currentText(),
            blasts_only=self.blasts_only.isChecked(),
            branch_per_class=self.branch_per_class.isChecked(),
        )
        self.runner.start(train_from_table, table, out, config, on_done=lambda mil: self._trained(mil, out))

    def _trained(self, mil, out: str) -> None:
        self.model_edit.setText(out)
        metrics = mil.metadata.get("cross_validation") or {}
        score = f"; cross-validated macro-F1 {metrics['macro_f1']:.2f}" if "macro_f1" in metrics else ""
        show_info(f"Trained a bag model for {', '.join(mil.classes)}{score}. Saved to {out}.")


def _with_browse(edit: QLineEdit, choose) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("…")
    button.setMaximumWidth(30)
    button.clicked.connect(choose)
    layout.addWidget(edit)
    layout.addWidget(button)
    return row


def _full_resolution(layer):
    return layer.data[0] if layer.multiscale else layer.data


def _thumbnail(image: np.ndarray, y: float, x: float) -> QIcon:
    half = THUMBNAIL // 2
    top, left = max(int(y) - half, 0), max(int(x) - half, 0)
    patch = np.ascontiguousarray(
        np.asarray(image[top : top + THUMBNAIL, left : left + THUMBNAIL, :3], dtype=np.uint8)
    )
    height, width = patch.shape[:2]
    qimage = QImage(patch.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimage))
