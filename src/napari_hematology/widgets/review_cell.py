"""The cell on show in the Review labels widget: its crop, what is known of it, and where it lies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_hematology.core.errors import HematologyError
from napari_hematology.widgets._layout import canvas_size
from napari_hematology.widgets._runner import report_error

CROP_PIXELS = 256
FOCUS_ZOOM = 4.0  # the most the viewer zooms in on a cell
CELL_SHARE = 0.4  # the cell's crop takes this share of the canvas's shorter side: the whole cell and around
MARKER_LAYER = "review cell"


class _CropView(QLabel):
    """The large crop; focusable so the review keys reach the queue."""

    def __init__(self) -> None:
        super().__init__("Open a project and load a label-issues table.")
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAlignment(Qt.AlignCenter)
        self.setWordWrap(True)
        self.setMinimumSize(CROP_PIXELS, CROP_PIXELS)
        self.setStyleSheet("border: 1px solid gray;")

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.setFocus()
        super().mousePressEvent(event)


class CellView(QWidget):
    """One cell of the queue: crop, given and suggested labels, progress and key legend.

    Showing a cell also centres the viewer on it when the project knows the slide and position.
    """

    def __init__(self, viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.crop_view = _CropView()
        self.cell_label = QLabel("")
        self.cell_label.setWordWrap(True)
        self.counter = QLabel("0 / 0 reviewed")
        self.keys_label = QLabel("")
        self.keys_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.crop_view, self.cell_label, self.counter, self.keys_label):
            layout.addWidget(widget)

    def show_classes(self, classes: list[str]) -> None:
        """List the keys that set each class (1 = first class)."""
        self.keys_label.setText("  ".join(f"{key} {name}" for key, name in enumerate(classes[:9], start=1)))

    def show_cell(self, queue, position: int) -> None:
        """Show the cell at ``position`` of ``queue`` (a ``review_queue`` table, or None) and the progress."""
        total = 0 if queue is None else len(queue)
        reviewed = 0 if queue is None else int(queue["reviewed"].sum())
        self.counter.setText(f"{reviewed} / {total} reviewed")
        if not total:
            self.crop_view.setText("No cells in the queue (check the filters).")
            self.cell_label.setText("")
            return
        row = queue.iloc[position]
        yours = row["label"] if isinstance(row["label"], str) else "—"
        given = row["given"] if isinstance(row["given"], str) else "—"
        suggested = row["suggested"] if isinstance(row["suggested"], str) else "— (press a class key)"
        self.cell_label.setText(
            f"Cell {position + 1} of {total}: {Path(str(row['cell'])).name}\n"
            f"Given: {given}   Suggested: {suggested} (issue score {row['issue_score']:.2f})\n"
            f"Your label: {yours}"
        )
        side = self._show_crop(row["crop"])
        self._centre_viewer(row, side)
        # the focus is left where it is: Enter typed in a text field (the annotator's name) must never act
        # on a cell; the queue takes the focus back when a decision is made or the crop is clicked

    def _show_crop(self, crop) -> int | None:
        """Show the whole crop, fitted to the view; returns its longer side in pixels (None: no crop)."""
        from napari_hematology.core.io import read_image, to_rgb8

        if not isinstance(crop, str):
            self.crop_view.setText("(no crop for this cell)")
            return None
        try:
            rgb, _ = to_rgb8(np.asarray(read_image(crop, lazy=False).data), name=Path(crop).name)
        except HematologyError as error:
            self.crop_view.setText(str(error))
            return None
        rgb = np.ascontiguousarray(rgb)
        image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format_RGB888)
        pixmap = QPixmap.fromImage(image.copy()).scaled(
            CROP_PIXELS, CROP_PIXELS, Qt.KeepAspectRatio, Qt.SmoothTransformation
        )
        self.crop_view.setPixmap(pixmap)
        return max(rgb.shape[:2])

    def _centre_viewer(self, row, side: int | None = None) -> None:
        """Show the cell's slide in the viewer, centred on the cell, when the project knows where it lies.

        The zoom shows the whole cell with its surroundings: its crop (``side`` pixels) takes
        :data:`CELL_SHARE` of the canvas, never zooming in further than :data:`FOCUS_ZOOM`.
        """
        if not isinstance(row["image"], str) or not np.isfinite([row["x"], row["y"]]).all():
            return
        layer = self._slide_layer(row["image"])
        if layer is None:
            return
        self.viewer.scene.camera.center = (float(row["y"]), float(row["x"]))
        canvas = min(canvas_size(self.viewer))
        scale = float(np.asarray(layer.scale)[-1])
        fit = CELL_SHARE * canvas / (side * scale) if side else FOCUS_ZOOM
        self.viewer.scene.camera.zoom = min(FOCUS_ZOOM, fit)
        if MARKER_LAYER in self.viewer.layers:
            self.viewer.layers[MARKER_LAYER].data = [[row["y"], row["x"]]]
        else:
            self.viewer.add_points(
                [[row["y"], row["x"]]],
                name=MARKER_LAYER,
                size=40,
                face_color="transparent",
                border_color="yellow",
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
