"""The "Gallery" widget: a project's cells laid out in the canvas by class, for fast review and retraining.

The gallery is three layers: an Image of the tiled crops, a Points layer with one square per cell
(features ``cell, label, probability, atypical_score``) outlined in its class colour, and the class headers
as text. Keys act on the Points layer while it is the active layer, so napari's own keys stay: click,
Shift-click or drag a box to select cells, 1-9 move them to a class, Enter signs off the page (every cell on
it keeps the class shown; a page larger than one screen asks first), J jumps to the first selected cell in
its slide and back, Ctrl+Z undoes. Every decision is written to the project at once, under the annotator's
name. A moved cell keeps its place until the next page.

Speed: crops are read once into an in-memory atlas of tiles, in a background thread, in the order they are
shown (the page appears at once with blank tiles that fill in); moving cells and undoing a move only
re-colour the touched squares, never redraw the page. Colours are the report's class colours
(:mod:`~napari_hematology.widgets._palette`), listed in the legend with each class's key. Retrain
fine-tunes the cell classifier on the project's corrected labels.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QLineEdit, QMessageBox, QPushButton, QWidget

from napari_hematology.core.errors import HematologyError
from napari_hematology.widgets._keys import OPEN, TRAIN, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import canvas_size, form_layout, note, scrolling_layout
from napari_hematology.widgets._legend import Legend
from napari_hematology.widgets._palette import class_colours
from napari_hematology.widgets._runner import TaskRunner, report_error

if TYPE_CHECKING:
    import pandas as pd

TILE = 64
GAP = 6
STEP = TILE + GAP
COLUMNS = 25
PAGE_SIZE = 2000
# tiles of one screen: as many as the canvas shows at this size on screen, where a cell can still be read
READABLE_TILE_PIXELS = 48
BLANK = 235  # a tile whose crop is still being read
UNREADABLE = 200  # a tile whose crop could not be read
LOAD_BATCH_S = 0.15  # the page is repainted with newly read tiles at most this often
IMAGE_LAYER = "gallery"
CELLS_LAYER = "gallery cells"
HEADERS_LAYER = "gallery classes"  # (class headers are now drawn into the page image)
HEADER_POINTS = 28
JUMP_KEY = "j"
JUMP_ZOOM = 4.0
# the same choices as core.labels.gallery.ORDERS, written here so the dock opens without pandas;
# tests/test_gallery_widget.py checks that they agree
ORDERS = ("probability", "atypical_score")


@dataclass
class _Decision:
    """One undoable step: the cells it labelled and the class each was shown under before."""

    cells: list[str]
    before: list[str]
    signed_off: bool = False


class _TileSignals(QObject):
    loaded = Signal(int, object)  # page generation, [(crop path, tile or None), ...]


class GalleryWidget(QWidget):
    """Review the cells of a project as a grid of crops by class in the canvas; retrain from the result."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Path | None = None
        self.classes: list[str] = []
        self.page: list[str] = []
        self.cells = None  # the page's cells, placed (a DataFrame once a page is shown)
        self.decisions: list[_Decision] = []
        self.tiles: dict[str, np.ndarray | None] = {}  # crop path -> tile (None: unreadable)
        self.image: np.ndarray | None = None
        self.jumped_from: tuple | None = None
        self.lab_model: Path | None = None
        self.image_layer: napari.layers.Image | None = None
        self.cells_layer: napari.layers.Points | None = None
        self._generation = 0
        self._loading = False
        self._tile_signals = _TileSignals()
        self._tile_signals.loaded.connect(self._paste_tiles)
        self.runner = TaskRunner()
        self.project_label = note("No project open.")
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
        self.legend = Legend("Keys and colours")
        self.legend.hide()
        self.retrain_button = shortcut_button("Retrain classifier", TRAIN, self.retrain)
        self.use_model_button = QPushButton("Use the lab model in Blast detection")
        self.use_model_button.setEnabled(False)
        self.use_model_button.clicked.connect(self.use_lab_model)
        self.status = note()
        self.crops_note = note()
        self.crops_note.hide()
        self._lay_out()

    def _lay_out(self) -> None:
        form = form_layout()
        form.addRow("Annotator", self.annotator)
        form.addRow("Order in a class", self.order)
        layout = scrolling_layout(self)
        layout.addWidget(self.project_label)
        layout.addWidget(shortcut_button("Open project…", OPEN, self._choose_project))
        layout.addLayout(form)
        for widget in (self.show_button, self.undo_button, self.sign_off_button, self.legend, self.status,
                       self.crops_note):
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
        self.page, self.decisions = [], []
        self._show_legend()

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
        from napari_hematology.core.labels.gallery import gallery_cells

        annotator = self._annotator()
        if annotator is None:
            return
        try:
            with self._store() as store:
                cells = gallery_cells(store, annotator, limit=PAGE_SIZE)
        except HematologyError as error:
            report_error(error)
            return
        self.page = list(cells["cell"])
        self.decisions = []
        if not self.page:
            show_info("Every cell of this project is reviewed by you.")
        self.redraw(cells=cells)

    def _page_cells(self, annotator: str) -> pd.DataFrame:
        from napari_hematology.core.labels.gallery import gallery_cells

        with self._store() as store:
            cells = gallery_cells(store, annotator, unreviewed_only=False)
        return cells[cells["cell"].isin(self.page)]

    def redraw(self, *args, cells: pd.DataFrame | None = None) -> None:
        """Lay the page out again (groups re-sorted; moved cells go to their new class).

        Args:
            *args: Ignored (the order box's signal).
            cells: The page's cells as just read from the project; None reads them again.

        """
        from napari_hematology.core.labels.gallery import grid_layout

        annotator = self._annotator()
        if annotator is None:
            return
        if not self.page:
            self._clear()
            return
        placed, headers = grid_layout(
            self._page_cells(annotator) if cells is None else cells, self.classes, COLUMNS,
            self.order.currentText(),
        )
        self.cells = placed
        self._draw(headers)
        self._update_status()

    # drawing ----------------------------------------------------------------------------------------

    def _clear(self) -> None:
        """Take the gallery's layers away (no page to show)."""
        self._generation += 1
        for name in (IMAGE_LAYER, CELLS_LAYER, HEADERS_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.cells, self.image, self.image_layer, self.cells_layer = None, None, None, None
        self._update_status()

    def _draw(self, headers: pd.DataFrame) -> None:
        """Show the page: tiles already in the atlas at once, the others as they are read."""
        self._generation += 1
        self.image = self._page_image(headers)
        missing = list(dict.fromkeys(path for path in self.cells["crop"] if path not in self.tiles))
        if self.image_layer is not None and self.image_layer in self.viewer.layers:
            self.image_layer.data = self.image
        else:
            self.image_layer = self.viewer.add_image(
                self.image, name=IMAGE_LAYER, rgb=True, contrast_limits=(0, 255)  # not measured on 20 MB
            )
        features = self.cells[["cell", "label", "probability", "atypical_score"]].reset_index(drop=True)
        if self.cells_layer is not None and self.cells_layer in self.viewer.layers:
            self.cells_layer.selected_data = set()
            self.cells_layer.data = _tile_centres(self.cells)
            self.cells_layer.features = features
        else:
            self.cells_layer = self.viewer.add_points(
                _tile_centres(self.cells),
                name=CELLS_LAYER,
                symbol="square",
                size=TILE + GAP / 2,
                face_color="transparent",
                border_width=0.06,
                features=features,
            )
            self._bind_keys(self.cells_layer)
        self._colour_cells()
        self.cells_layer.mode = "select"
        self.viewer.layers.selection.active = self.cells_layer
        self.viewer.reset_view()
        self._show_unreadable()
        if missing:
            self._load_tiles(missing)

    def _page_image(self, headers: pd.DataFrame) -> np.ndarray:
        """The page as one RGB image from the atlas, with class headers; crops not read yet are blank."""
        rows = int(max(self.cells["row"].max() if len(self.cells) else 0,
                       headers["row"].max() if len(headers) else 0)) + 1
        image = np.full((rows * STEP, COLUMNS * STEP, 3), 255, dtype=np.uint8)
        for path, row, col in zip(self.cells["crop"], self.cells["row"], self.cells["col"], strict=True):
            _paste(image, int(row), int(col), self.tiles.get(path, _BLANK_TILE))
        colours = self._colours()
        for header in headers.itertuples():
            _write_header(image, int(header.row), f"{header.label} ({header.count})", colours[header.label])
        return image

    def _load_tiles(self, paths: list[str]) -> None:
        """Read ``paths`` into the atlas in a background thread, in display order, in batches."""
        generation = self._generation
        self._loading = True
        signals = self._tile_signals

        def read() -> None:
            batch, started = [], time.monotonic()
            for path in paths:
                if generation != self._generation:
                    return  # another page is shown now
                batch.append((path, _tile(path)))
                if time.monotonic() - started > LOAD_BATCH_S:
                    send(batch)
                    batch, started = [], time.monotonic()
            send(batch)
            send(None)  # the end

        def send(batch) -> None:
            with contextlib.suppress(RuntimeError):  # the dock was closed meanwhile
                signals.loaded.emit(generation, batch)

        threading.Thread(target=read, name="gallery tiles", daemon=True).start()

    def _paste_tiles(self, generation: int, batch: list | None) -> None:
        """Put newly read tiles into the atlas and, if their page is still shown, onto it."""
        if batch is None:
            if generation == self._generation:
                self._loading = False
                self._show_unreadable()
            return
        self.tiles.update(batch)
        if generation != self._generation or self.image is None:
            return
        where = {path: index for index, path in enumerate(self.cells["crop"])}
        rows, cols = self.cells["row"].to_numpy(), self.cells["col"].to_numpy()
        for path, tile in batch:
            index = where.get(path)
            if index is not None:
                _paste(self.image, int(rows[index]), int(cols[index]), tile)
        if self.image_layer is not None:
            self.image_layer.refresh()

    @property
    def loading(self) -> bool:
        """Whether crops of the page shown are still being read."""
        return self._loading

    def _show_unreadable(self) -> None:
        """Say how many crops of the page could not be read (they are grey tiles)."""
        if self.cells is None:
            return
        unreadable = [path for path in dict.fromkeys(self.cells["crop"]) if path in self.tiles
                      and self.tiles[path] is None]
        if unreadable:
            self.crops_note.setText(
                f"{len(unreadable)} crop{'' if len(unreadable) == 1 else 's'} of this page could not be read "
                f"(grey tiles), e.g. {unreadable[0]}. Their cells can still be labelled."
            )
        self.crops_note.setVisible(bool(unreadable))

    def _colours(self) -> dict[str, str]:
        shown = set() if self.cells is None else set(self.cells["label"])
        return class_colours([*self.classes, *sorted(shown - set(self.classes))])

    def _colour_cells(self, indices=None) -> None:
        """Outline each cell (or only those at ``indices``) in its class colour."""
        from napari.utils.colormaps.standardize_color import transform_color

        labels = self.cells_layer.features["label"].to_numpy()
        colours = self._colours()
        lookup = dict(zip(colours, transform_color(list(colours.values())), strict=True))
        if indices is None:
            self.cells_layer.border_color = np.array([lookup[label] for label in labels])
            return
        indices = np.asarray(indices, dtype=int)
        border = self.cells_layer.border_color.copy()
        border[indices] = [lookup[label] for label in labels[indices]]
        self.cells_layer.border_color = border

    def _show_legend(self) -> None:
        """Each class with its key (1-9) and its colour, the same as in Blast detection and the report."""
        colours = class_colours(self.classes)
        self.legend.set_colours(
            {(f"{key} {name}" if key <= 9 else name): colours[name]
             for key, name in enumerate(self.classes, start=1)}
        )

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
        shown = 0 if self.cells is None else len(self.cells)
        self.sign_off_button.setText(f"Sign off page: {shown} cells (Enter on the gallery)")
        self.status.setText(
            f"{shown} cells on this page. Select cells, then press a class key (legend above). Enter signs "
            f"off the page, {JUMP_KEY.upper()} jumps to the cell in its slide and back, Ctrl+Z undoes."
        )

    # decisions --------------------------------------------------------------------------------------

    def move_selected(self, label: str) -> None:
        """Move the selected cells to ``label`` (one undoable decision); only their squares are redrawn."""
        annotator = self._annotator()
        if annotator is None or self.cells_layer is None:
            return
        selected = sorted(self.cells_layer.selected_data)
        if not selected:
            show_info("Select cells first: click, Shift-click, or drag a box around them.")
            return
        features = self.cells_layer.features
        names = list(features["cell"].iloc[selected])
        before = list(features["label"].iloc[selected])
        if not self._record([(name, label) for name in names], annotator):
            return
        self.decisions.append(_Decision(names, before))
        features.loc[selected, "label"] = label
        self._colour_cells(selected)

    def screen_capacity(self) -> int:
        """How many tiles one screen of the canvas shows at a size where a cell can be read."""
        height, width = canvas_size(self.viewer)
        per_row = min(COLUMNS, max(1, int(width) // READABLE_TILE_PIXELS))
        return per_row * max(1, int(height) // READABLE_TILE_PIXELS)

    def sign_off(self) -> None:
        """Record the shown class of every cell on the page as the annotator's decision; next page.

        A page holding more than one screen of cells (:meth:`screen_capacity`) asks first, with the count.
        """
        annotator = self._annotator()
        if annotator is None or self.cells_layer is None:
            return
        features = self.cells_layer.features
        count, screen = len(features), self.screen_capacity()
        if count > screen and not self.confirm(
            f"Sign off all {count} cells of this page?\n\nThe page holds more than one screen (about "
            f"{screen} cells at a readable size): every cell, seen or not, keeps the class it is shown "
            "under. Ctrl+Z undoes the sign-off."
        ):
            return
        names, labels = list(features["cell"]), list(features["label"])
        if self._record(list(zip(names, labels, strict=True)), annotator):
            show_info(f"Signed off {count} cells.")
            self.next_page()
            self.decisions.append(_Decision(names, labels, signed_off=True))

    def confirm(self, question: str) -> bool:
        """Ask the user ``question`` (Yes / No)."""
        answer = QMessageBox.question(self, "Sign off page", question)
        return answer == QMessageBox.StandardButton.Yes

    def _record(self, labels: list[tuple[str, str]], annotator: str) -> bool:
        try:
            with self._store() as store:
                store.set_labels(labels, annotator, "human")
        except HematologyError as error:
            report_error(error)
            return False
        return True

    def undo(self) -> None:
        """Undo the last move or sign-off of this session (the project records the undo).

        Undoing a move re-colours its cells only; undoing a sign-off shows its page again.
        """
        annotator = self._annotator()
        if annotator is None:
            return
        if not self.decisions:
            show_info("Nothing to undo on this page.")
            return
        decision = self.decisions.pop()
        try:
            with self._store() as store:
                store.undo_many(annotator, len(decision.cells))
        except HematologyError as error:
            report_error(error)
            return
        if decision.signed_off:
            self.page = decision.cells
            self.redraw()
            return
        features = self.cells_layer.features
        where = {name: index for index, name in enumerate(features["cell"])}
        indices = [where[name] for name in decision.cells if name in where]
        features.loc[indices, "label"] = [label for name, label in zip(decision.cells, decision.before,
                                                                        strict=True) if name in where]
        self._colour_cells(indices)

    # slide ------------------------------------------------------------------------------------------

    def jump(self) -> None:
        """Show the first selected cell in its slide; called again, come back to the gallery."""
        import pandas as pd

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
        from napari_hematology.core.cells.finetune import training_seconds_estimate, training_steps
        from napari_hematology.core.labels.review import corrected_labels, fine_tune_project

        if self.project is None:
            show_info("Open a review project first (Open project…).")
            return
        with self._store() as store:
            reviewed = len(corrected_labels(store))
        started = self.runner.start(fine_tune_project, self.project, on_done=self._retrained)
        if started is not None and reviewed:
            steps = training_steps(reviewed)
            minutes = training_seconds_estimate(steps) / 60
            self.status.setText(
                f"Retraining on {reviewed} reviewed cells: {steps} training steps, about {minutes:.1f} min "
                "on a 2-core CPU (less on a GPU). A fifth of the cells is held out to measure the accuracy "
                "before and after. Cancel (Esc) stops it and saves nothing."
            )

    def _retrained(self, result: dict) -> None:
        self.lab_model = Path(result["model_dir"])
        self.use_model_button.setEnabled(True)
        self.status.setText(
            f"Lab model saved in {self.lab_model} ({result['seconds']:.0f} s). Balanced accuracy on "
            f"{result['held_out']} of the {result['cells']} reviewed cells that it did not train on: before "
            f"{result['before']:.2f}, after {result['after']:.2f}. {result['skipped']}".strip()
        )

    def use_lab_model(self) -> None:
        """Open Blast detection (if needed), bring its page to the front and set it to the lab model."""
        if self.lab_model is None:
            return
        frame, blast = self.viewer.window.add_plugin_dock_widget("napari-hematology", "Blast detection")
        frame.raise_()
        blast.form.model.value = self.lab_model
        show_info(f"Blast detection now uses {self.lab_model}.")


_BLANK_TILE = np.full((TILE, TILE, 3), BLANK, dtype=np.uint8)
_UNREADABLE_TILE = np.full((TILE, TILE, 3), UNREADABLE, dtype=np.uint8)


def _paste(image: np.ndarray, row: int, col: int, tile: np.ndarray | None) -> None:
    """Draw ``tile`` (centred, on white) at grid position ``row, col`` of the page image."""
    tile = _UNREADABLE_TILE if tile is None else tile
    top, left = row * STEP, col * STEP
    image[top : top + TILE, left : left + TILE] = 255
    height, width = tile.shape[:2]
    y, x = top + (TILE - height) // 2, left + (TILE - width) // 2
    image[y : y + height, x : x + width] = tile


def _write_header(image: np.ndarray, row: int, text: str, colour: str) -> None:
    """Write a class header (a swatch of its colour and its name) into grid row ``row`` of the page."""
    from PIL import Image, ImageDraw, ImageFont

    top = row * STEP
    band = Image.fromarray(image[top : top + STEP])
    draw = ImageDraw.Draw(band)
    draw.rectangle((4, STEP // 2 - 14, 32, STEP // 2 + 14), fill=colour, outline="black")
    font = ImageFont.load_default(size=HEADER_POINTS)
    draw.text((44, STEP // 2), text, fill="black", anchor="lm", font=font)
    image[top : top + STEP] = np.asarray(band)


def _tile_centres(cells: pd.DataFrame) -> np.ndarray:
    return np.c_[cells["row"] * STEP + TILE / 2, cells["col"] * STEP + TILE / 2].astype(float)


def _tile(path: str) -> np.ndarray | None:
    """A crop file shrunk to fit a tile; None when it cannot be read (drawn grey, and counted)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            crop = opened.convert("RGB")
            crop.thumbnail((TILE, TILE))
            return np.asarray(crop)
    except (OSError, ValueError):
        return None
