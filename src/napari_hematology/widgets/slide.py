"""The "Slide prediction" dock widget: slide-level class (e.g. genetic subtype) from the cells of an image.

Predict: pick the image and its cell labels (from blast detection) and a bag model; the dock shows the
class probabilities as bars, a separate attention layer fills each cell by its weight (with a colour bar),
and a gallery of the highest-attention cells jumps the viewer to a cell when clicked. Train: a table of
cell crops with slide labels (BAGS.csv) and a magicgui form of settings train a new bag model. All the
work is done by :mod:`napari_hematology.core.subtype`.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
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

from napari_hematology.widgets._keys import RUN, TRAIN, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import fit_names, form_layout, note, scrolling_layout
from napari_hematology.widgets._runner import TaskRunner

# MilConfig.min_cells, written here so the dock opens without importing the bag models (pandas, torch);
# tests/test_slide_widget.py checks that they agree
DEFAULT_MIN_CELLS = 2
GALLERY_SIZE = 12
THUMBNAIL = 112
ENCODERS = ("cell_classifier", "descriptors")
ATTENTION_SUFFIX = " attention"
ATTENTION_OPACITY = 0.8
# below this fraction of the highest weight a cell's fill fades out, so the image shows between the cells
ATTENTION_FLOOR = 1e-3


def train_form() -> Container:
    """The magicgui form of the training settings (a :class:`MilConfig` and where the data and model are)."""
    return Container(
        widgets=[
            FileEdit(name="table", label="Slides table", mode="r", filter="*.csv", nullable=True,
                     tooltip="BAGS.csv: bag, image, label"),
            FileEdit(name="out", label="Save model to", mode="d", nullable=True),
            ComboBox(name="encoder", label="Cell encoder", choices=ENCODERS),
            CheckBox(name="blasts_only", text="Only predicted blasts"),
            CheckBox(name="branch_per_class", text="One attention branch per class"),
            SpinBox(name="min_cells", label="Min. cells per slide", value=DEFAULT_MIN_CELLS, min=1,
                    max=100_000, tooltip="Fewest cells a slide may have. The model keeps this minimum for "
                    "prediction: lower it and retrain to predict slides with fewer cells."),
        ]
    )


class SlidePredictionWidget(QWidget):
    """Predict a slide's class from its cells with a bag (attention MIL) model, or train one."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = TaskRunner()
        self.image_combo = fit_names(QComboBox())
        self.labels_combo = fit_names(QComboBox())
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("bag model folder (from 'mil train')")
        self.predict_button = shortcut_button("Predict", RUN, self.predict)
        self.result_label = QLabel("")
        self.bars = QFormLayout()
        self.layers_note = QLabel("")
        self.layers_note.setWordWrap(True)
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.ViewMode.IconMode)
        self.gallery.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.gallery.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.gallery.itemClicked.connect(self.jump_to_cell)
        self.form = train_form()
        self.form.margins = (0, 0, 0, 0)  # the page has its own margins
        self.train_button = shortcut_button("Train", TRAIN, self.train)
        layout = scrolling_layout(self)
        layout.addWidget(self._predict_box())
        layout.addWidget(self._train_box())
        layout.addWidget(self.runner)
        bind_button_keys(self)
        self._image_layer: Image | None = None
        self._labels_layer: Labels | None = None
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    def _predict_box(self) -> QGroupBox:
        box = QGroupBox("Predict")
        form = form_layout(box)
        form.addRow("Image", self.image_combo)
        form.addRow("Cell labels", self.labels_combo)
        form.addRow("Model", _with_browse(self.model_edit, self._choose_model))
        form.addRow(self.predict_button)
        form.addRow(self.result_label)
        form.addRow(self.bars)
        form.addRow(self.layers_note)
        form.addRow(note("Highest-attention cells (click to go there)"))
        form.addRow(self.gallery)
        return box

    def _train_box(self) -> QGroupBox:
        box = QGroupBox("Train")
        layout = QVBoxLayout(box)
        layout.addWidget(self.form.native)
        layout.addWidget(self.train_button)
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

    # ------------------------------------------------------------------------------------- predict

    def predict(self) -> None:
        """Predict the class of the chosen image from its labelled cells (clearing the last prediction)."""
        from napari_hematology.core.subtype.prediction import predict_cells

        image = self._layer(self.image_combo, Image)
        labels = self._layer(self.labels_combo, Labels)
        if image is None or labels is None:
            show_error("Choose an image and its cell labels (run Blast detection first).")
            return
        if not self.model_edit.text().strip():
            show_error("Choose a bag model folder (train one below, or with 'napari-hematology mil train').")
            return
        self._clear_prediction()
        self._image_layer, self._labels_layer = image, labels
        self.runner.start(
            predict_cells,
            _full_resolution(image),
            _full_resolution(labels),
            self.model_edit.text().strip(),
            name=image.name,
            on_done=self._show_prediction,
            on_error=lambda error: self.result_label.setText(f"No prediction for {image.name}."),
        )

    def _layer(self, combo: QComboBox, kind: type):
        matches = [layer for layer in self.viewer.layers if layer.name == combo.currentText()]
        return matches[0] if matches and isinstance(matches[0], kind) else None

    def _clear_prediction(self) -> None:
        self.result_label.setText("")
        self._show_bars({})
        self.layers_note.setText("")
        self.gallery.clear()

    def _show_prediction(self, result) -> None:
        labels = self._labels_layer
        self.result_label.setText(f"Predicted: <b>{result.predicted}</b>")
        self._show_bars(result.probabilities)
        labels.features = result.cells
        attention = self._show_attention(labels, result.cells)
        self.layers_note.setText(
            f"Layers: '{labels.name}' marks the cells (by class when it comes from Blast detection); "
            f"'{attention.name}' fills each cell by its weight in this prediction, 1 = the average cell "
            "(colour bar on the canvas; cells left out have no fill)."
        )
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

    def _show_attention(self, labels: Labels, cells) -> Image:
        """Add the attention as its own layer over the image and under the cells, with a colour bar."""
        data = np.asarray(_full_resolution(labels))
        scores = cells.dropna(subset=["attention"])
        lookup = np.zeros(int(data.max()) + 1, dtype=np.float32)
        lookup[scores["label"].to_numpy()] = scores["attention"].to_numpy() * len(scores)
        name = f"{labels.name}{ATTENTION_SUFFIX}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_image(
            lookup[data],
            name=name,
            colormap=_attention_colormap(),
            opacity=ATTENTION_OPACITY,
            blending="translucent",
            contrast_limits=(0.0, max(float(lookup.max()), 1e-6)),
            scale=labels.scale,
            translate=labels.translate,
        )
        layer.colorbar.visible = True
        layers = self.viewer.layers
        layers.move(layers.index(layer), layers.index(labels))  # under the cells' class outlines
        return layer

    def _fill_gallery(self, cells) -> None:
        """Show the highest-attention cells whole (their box plus a margin), as in the bag model's input."""
        from napari_hematology.core.io import to_rgb8
        from napari_hematology.core.subtype.prediction import cell_crops

        self.gallery.clear()
        top = cells.dropna(subset=["attention"]).nlargest(GALLERY_SIZE, "attention")
        if top.empty:
            return
        labels = np.asarray(_full_resolution(self._labels_layer))
        image, _ = to_rgb8(np.asarray(_full_resolution(self._image_layer)), name=self._image_layer.name)
        table, crops = cell_crops(image, np.where(np.isin(labels, top["label"]), labels, 0))
        crop_of = dict(zip(table["label"], crops, strict=True))
        for row in top.itertuples():
            item = QListWidgetItem(_thumbnail(crop_of[row.label]), f"{row.attention:.2f}")
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
        """Train a bag model from the slides table with the form's settings."""
        from napari_hematology.core.subtype.fitting import train_from_table

        table, out = self.form.table.value, self.form.out.value
        if table is None or out is None:
            show_error("Choose the slides table (BAGS.csv) and a folder for the model.")
            return
        from napari_hematology.core.subtype.bags import MilConfig

        config = MilConfig(
            encoder=self.form.encoder.value,
            blasts_only=self.form.blasts_only.value,
            branch_per_class=self.form.branch_per_class.value,
            min_cells=self.form.min_cells.value,
        )
        self.runner.start(train_from_table, table, out, config, on_done=lambda mil: self._trained(mil, out))

    def _trained(self, mil, out) -> None:
        self.model_edit.setText(str(out))
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


def _attention_colormap():
    """magma, transparent at zero: cells without weight and the space between cells show the image."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    steps = np.linspace(0.0, 1.0, 256)
    colours = np.vstack([[0.0, 0.0, 0.0, 0.0], ensure_colormap("magma").map(steps)])
    controls = np.concatenate([[0.0], ATTENTION_FLOOR + (1 - ATTENTION_FLOOR) * steps])
    return Colormap(colours, controls=controls, name="magma, clear at 0")


def _thumbnail(crop: np.ndarray) -> QIcon:
    """A crop scaled to the gallery's icon size (small cells are enlarged, large ones shrunk)."""
    rgb = np.ascontiguousarray(crop[..., :3])
    height, width = rgb.shape[:2]
    qimage = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    pixmap = QPixmap.fromImage(qimage).scaled(
        THUMBNAIL, THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    return QIcon(pixmap)
