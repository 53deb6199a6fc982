"""The "Gallery" widget: a project's cells laid out in the canvas by class, for fast review and retraining.

The gallery is two layers: an Image of the tiled crops, and a Points layer with one square per cell
(features ``cell, label, probability, atypical_score``) outlined in its class colour, with the class
headers as text. Keys act on the Points layer while it is the active layer, so napari's own keys stay:
click, Shift-click or drag a box to select cells, 1-9 move them to a class, Enter signs off the page (every
cell on it keeps the class shown), J jumps to the first selected cell in its slide and back, Ctrl+Z
undoes. Every decision is written to the project at once, under the annotator's name. A moved cell keeps
its place until the next page. Retrain fine-tunes the cell classifier on the project's corrected labels.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
import pandas as pd
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_hematology.core.errors import HematologyError
from napari_hematology.core.labels.gallery import ORDERS, gallery_cells, grid_layout
from napari_hematology.widgets._keys import OPEN, TRAIN, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import scrolling_layout
from napari_hematology.widgets._palette import category_colours
from napari_hematology.widgets._runner import TaskRunner, report_error

TILE = 64
GAP = 6
COLUMNS = 25
PAGE_SIZE = 2000
IMAGE_LAYER = "gallery"
CELLS_LAYER = "gallery cells"
HEADERS_LAYER = "gallery classes"
JUMP_KEY = "j"
JUMP_ZOOM = 4.0


class GalleryWidget(QWidget):
    """Review the cells of a project as a grid of crops by class in the canvas; retrain from the result."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Path | None = None
        self.classes: list[str] = []
        self.page: list[str] = []
        self.cells = pd.DataFrame()
        self.undo_sizes: list[int] = []
        self.jumped_from: tuple | None = None
        self.lab_model: Path | None = None
        self.image_layer: napari.layers.Image | None = None
        self.cells_layer: napari.layers.Points | None = None
        self.runner = TaskRunner()
        self.project_label = QLabel("No project open.")
        self.annotator = QLineEdit()
        self.annotator.setPlaceholderText("your name (required)")
        self.order = QComboBox()
        self.order.addItems(ORDERS)
        self.order.currentIndexChanged.connect(self.redraw)
        self.show_button = QPushButton("Show next page")
        self.show_button.clicked.connect(self.next_page)
        self.undo_button = QPushButton("Undo (Ctrl+Z on the gallery)")
        self.undo_button.clicked.connect(self.undo)
        self.sign_off_button = QPushButton("Sign off page (Enter on the gallery)")
        self.sign_off_button.clicked.connect(self.sign_off)
        self.retrain_button = shortcut_button("Retrain classifier", TRAIN, self.retrain)
        self.use_model_button = QPushButton("Use the lab model in Blast detection")
        self.use_model_button.setEnabled(False)
        self.use_model_button.clicked.connect(self.use_lab_model)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._lay_out()

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("Annotator", self.annotator)
        form.addRow("Order in a class", self.order)
        layout = scrolling_layout(self)
        layout.addWidget(self.project_label)
        layout.addWidget(shortcut_button("Open project…", OPEN, self._choose_project))
        layout.addLayout(form)
        for widget in (self.show_button, self.undo_button, self.sign_off_button, self.status):
            layout.addWidget(widget)
        for widget in (self.retrain_button, self.runner, self.use_model_button):
            layout.addWidget(widget)
        layout.addStretch()
        bind_button_keys(self)

    # project and pages ------------------------------------------------------------------------------

    def _choose_project(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Review project", "", "Projects (*.sqlite)")
        if path:
            self.open_project(path)

    def open_project(self, path: str | Path) -> None:
        """Open a project (it must exist: send cells to review or import crop folders first)."""
        from napari_hematology.core.labels.store import AnnotationStore

        try:
            with AnnotationStore(path, create=False) as store:
                self.classes = store.classes
        except HematologyError as error:
            report_error(error)
            return
        self.project = Path(path)
        self.project_label.setText(f"Project: {self.project.name} ({', '.join(self.classes)})")
        self.page, self.undo_sizes = [], []

    def _store(self):
        from napari_hematology.core.labels.store import AnnotationStore

        return AnnotationStore(self.project, create=False)

    def _annotator(self) -> str | None:
        name = self.annotator.text().strip()
        if self.project is None:
            show_info("Open a review project first (Open project…).")
            return None
        if not name:
            show_info("Type your name in 'Annotator' first: every decision is recorded with it.")
            return None
        return name

    def next_page(self) -> None:
        """Show the next cells the annotator has not reviewed (up to one page)."""
        annotator = self._annotator()
        if annotator is None:
            return
        try:
            with self._store() as store:
                self.page = list(gallery_cells(store, annotator, limit=PAGE_SIZE)["cell"])
        except HematologyError as error:
            report_error(error)
            return
        self.undo_sizes = []
        if not self.page:
            show_info("Every cell of this project is reviewed by you.")
        self.redraw()

    def _page_cells(self, annotator: str) -> pd.DataFrame:
        with self._store() as store:
            cells = gallery_cells(store, annotator, unreviewed_only=False)
        return cells[cells["cell"].isin(self.page)]

    def redraw(self, *args) -> None:
        """Lay the page out again (groups re-sorted; moved cells go to their new class)."""
        annotator = self._annotator()
        if annotator is None or not self.page:
            return
        placed, headers = grid_layout(
            self._page_cells(annotator), self.classes, COLUMNS, self.order.currentText()
        )
        self.cells = placed
        self._draw(_tiled_image(placed, headers), headers)
        self._update_status()

    # drawing ----------------------------------------------------------------------------------------

    def _draw(self, image: np.ndarray, headers: pd.DataFrame) -> None:
        for name in (IMAGE_LAYER, CELLS_LAYER, HEADERS_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.image_layer = self.viewer.add_image(image, name=IMAGE_LAYER, rgb=True)
        self.viewer.add_points(
            np.c_[headers["row"] * (TILE + GAP) + TILE / 2, np.zeros(len(headers))],
            name=HEADERS_LAYER,
            size=1,
            face_color="transparent",
            border_width=0,
            text={"string": [f"{row.label} ({row.count})" for row in headers.itertuples()],
                  "color": "black", "anchor": "upper_left", "size": 12},
        )
        self.cells_layer = self.viewer.add_points(
            _tile_centres(self.cells),
            name=CELLS_LAYER,
            symbol="square",
            size=TILE + GAP / 2,
            face_color="transparent",
            border_width=0.06,
            features=self.cells[["cell", "label", "probability", "atypical_score"]].reset_index(drop=True),
        )
        self._colour_cells()
        self._bind_keys(self.cells_layer)
        self.cells_layer.mode = "select"
        self.viewer.layers.selection.active = self.cells_layer
        self.viewer.reset_view()

    def _colour_cells(self) -> None:
        colours = category_colours([*self.classes, *sorted(set(self.cells["label"]) - set(self.classes))])
        self.cells_layer.border_color = [colours[label] for label in self.cells_layer.features["label"]]

    def _bind_keys(self, layer: napari.layers.Points) -> None:
        for digit in range(1, 10):
            layer.bind_key(str(digit), self._class_key(digit - 1), overwrite=True)
        layer.bind_key("Enter", lambda _layer: self.sign_off(), overwrite=True)
        layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
        layer.bind_key(JUMP_KEY, lambda _layer: self.jump(), overwrite=True)

    def _class_key(self, index: int):
        def move(_layer) -> None:
            if index < len(self.classes):
                self.move_selected(self.classes[index])

        return move

    def _update_status(self) -> None:
        shown = len(self.cells)
        self.status.setText(
            f"{shown} cells on this page. Select cells, then press 1-9: "
            + ", ".join(f"{i + 1} {name}" for i, name in enumerate(self.classes[:9]))
            + f". Enter signs off the page, {JUMP_KEY.upper()} jumps to the cell in its slide and back."
        )

    # decisions --------------------------------------------------------------------------------------

    def move_selected(self, label: str) -> None:
        """Move the selected cells to ``label`` (one undoable decision in the project)."""
        annotator = self._annotator()
        if annotator is None or self.cells_layer is None:
            return
        selected = sorted(self.cells_layer.selected_data)
        if not selected:
            show_info("Select cells first: click, Shift-click, or drag a box around them.")
            return
        features = self.cells_layer.features
        names = list(features["cell"].iloc[selected])
        if not self._record([(name, label) for name in names], annotator):
            return
        features.loc[selected, "label"] = label
        self.cells_layer.features = features
        self._colour_cells()

    def sign_off(self) -> None:
        """Record the shown class of every cell on the page as the annotator's decision; next page."""
        annotator = self._annotator()
        if annotator is None or self.cells_layer is None:
            return
        features = self.cells_layer.features
        if self._record(list(zip(features["cell"], features["label"], strict=True)), annotator):
            show_info(f"Signed off {len(features)} cells.")
            self.next_page()

    def _record(self, labels: list[tuple[str, str]], annotator: str) -> bool:
        try:
            with self._store() as store:
                store.set_labels(labels, annotator, "human")
        except HematologyError as error:
            report_error(error)
            return False
        self.undo_sizes.append(len(labels))
        return True

    def undo(self) -> None:
        """Undo the last move or sign-off of this session (the project records the undo)."""
        annotator = self._annotator()
        if annotator is None:
            return
        if not self.undo_sizes:
            show_info("Nothing to undo on this page.")
            return
        try:
            with self._store() as store:
                restored = store.undo_many(annotator, self.undo_sizes.pop())
        except HematologyError as error:
            report_error(error)
            return
        if not set(restored) & set(self.page):
            self.page = list(dict.fromkeys(restored))  # undoing a sign-off brings its page back
        self.redraw()

    # slide ------------------------------------------------------------------------------------------

    def jump(self) -> None:
        """Show the first selected cell in its slide; called again, come back to the gallery."""
        if self.jumped_from is not None:
            self._jump_back()
            return
        if self.cells_layer is None or not self.cells_layer.selected_data:
            show_info("Select a cell to see it in its slide.")
            return
        cell = self.cells.iloc[min(self.cells_layer.selected_data)]
        layer = self._slide_layer(cell["image"])
        if layer is None or pd.isna(cell["x"]):
            show_info(f"Open the slide of this cell first ({cell['image'] or 'no slide recorded'}).")
            return
        camera = self.viewer.scene.camera
        self.jumped_from = (camera.center, camera.zoom, layer, layer.visible)
        self._show_gallery(False)
        layer.visible = True
        camera.center = tuple(layer.data_to_world((cell["y"], cell["x"])))
        camera.zoom = JUMP_ZOOM

    def _jump_back(self) -> None:
        center, zoom, layer, visible = self.jumped_from
        self.jumped_from = None
        layer.visible = visible
        self._show_gallery(True)
        self.viewer.scene.camera.center, self.viewer.scene.camera.zoom = center, zoom

    def _show_gallery(self, visible: bool) -> None:
        for name in (IMAGE_LAYER, CELLS_LAYER, HEADERS_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = visible

    def _slide_layer(self, image) -> napari.layers.Image | None:
        if not image:
            return None
        slides = [
            layer for layer in self.viewer.layers
            if isinstance(layer, napari.layers.Image) and layer.name != IMAGE_LAYER
        ]
        return next(
            (layer for layer in slides if image in (layer.source.path, layer.name)), None
        )

    # retraining -------------------------------------------------------------------------------------

    def retrain(self) -> None:
        """Fine-tune the cell classifier on the project's corrected labels in the background."""
        from napari_hematology.core.labels.review import fine_tune_project

        if self.project is None:
            show_info("Open a review project first (Open project…).")
            return
        self.runner.start(fine_tune_project, self.project, on_done=self._retrained)

    def _retrained(self, result: dict) -> None:
        self.lab_model = Path(result["model_dir"])
        self.use_model_button.setEnabled(True)
        self.status.setText(
            f"Lab model saved in {self.lab_model}. Balanced accuracy on reviewed cells it did not train "
            f"on ({result['folds']}-fold, {result['cells']} cells): before {result['before']:.2f}, after "
            f"{result['after']:.2f}. {result['skipped']}".strip()
        )

    def use_lab_model(self) -> None:
        """Open Blast detection (if needed) and set its model folder to the lab model."""
        if self.lab_model is None:
            return
        _, blast = self.viewer.window.add_plugin_dock_widget("napari-hematology", "Blast detection")
        blast.form.model.value = self.lab_model
        show_info(f"Blast detection now uses {self.lab_model}.")


def _tile_centres(cells: pd.DataFrame) -> np.ndarray:
    step = TILE + GAP
    return np.c_[cells["row"] * step + TILE / 2, cells["col"] * step + TILE / 2].astype(float)


def _tiled_image(cells: pd.DataFrame, headers: pd.DataFrame) -> np.ndarray:
    """One RGB image of the page: each crop fitted into its tile, on a white background."""
    step = TILE + GAP
    rows = int(max(cells["row"].max() if len(cells) else 0, headers["row"].max() if len(headers) else 0)) + 1
    image = np.full((rows * step, COLUMNS * step, 3), 255, dtype=np.uint8)
    for cell in cells.itertuples():
        tile = _tile(cell.crop)
        top, left = int(cell.row) * step, int(cell.col) * step
        image[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return image


def _tile(path: str) -> np.ndarray:
    """A crop file shrunk to fit a tile (grey when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            crop = opened.convert("RGB")
            crop.thumbnail((TILE, TILE))
            return np.asarray(crop)
    except OSError:
        return np.full((TILE, TILE, 3), 200, dtype=np.uint8)
