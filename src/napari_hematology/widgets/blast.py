"""The "Blast detection" widget: segment and classify the white cells of an image layer.

Results appear as a Labels layer with a ``features`` table, each cell outlined in its class colour (filled
on request) with a legend of the classes; the widget shows the cell counts and blast percentage, and the
crop and probabilities of the cell last clicked. Changing the blast threshold re-colours and re-counts the
cells, and updates the cell shown, without recomputing anything. The settings are a magicgui form.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from napari_hematology.core.cells.classes import DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.errors import HematologyError, InputError
from napari_hematology.widgets._keys import RUN, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import fit_names, model_folder_field, scrolling_layout
from napari_hematology.widgets._legend import Legend
from napari_hematology.widgets._palette import class_colours
from napari_hematology.widgets._runner import TaskRunner, report_error
from napari_hematology.widgets._summaries import prepare as prepare_summaries
from napari_hematology.widgets._summaries import summary_lines

if TYPE_CHECKING:  # the analysis (pandas, scikit-image) is imported by the worker, not while the dock opens
    import pandas as pd

    from napari_hematology.core.cells.analysis import ImageAnalysis

LAYER_SUFFIX = " cells"
MAX_PIXELS = 100_000_000
CROP_VIEW_SIDE = 128
OUTLINE_PIXELS = 2
FILLED_OPACITY = 0.5
NO_CELL_SHOWN = "Click a cell to see its crop and probabilities."
QUALITY = "quality"  # the cell table's front-end check: "ok", or why the cell is left out of the counts
LOADING_MODEL = "Loading the cell classifier…"


def parameter_form() -> Container:
    """The magicgui form of the run's settings: image, field, model, threshold and how cells are drawn."""
    image = ComboBox(name="image", label="Image", choices=())
    fit_names(image.native)
    return Container(
        widgets=[
            image,
            CheckBox(name="visible_only", text="Visible field only (for large slides)"),
            model_folder_field(),
            FloatSpinBox(
                name="threshold", label="Blast threshold", value=DEFAULT_BLAST_THRESHOLD, min=0.0, max=1.0,
                step=0.05,
            ),
            FloatSpinBox(
                name="pixel_size", label="Pixel size (µm)", value=0.0, min=0.0, max=5.0, step=0.005,
                tooltip="0 = found by the tool: read from the file, else measured on the red cells.",
            ),
            CheckBox(
                name="filled",
                text="Filled cells",
                tooltip="Fill the cells at half opacity; by default they are outlined in their class colour, "
                "so nucleus and granules stay visible.",
            ),
        ]
    )


class BlastDetectionWidget(QWidget):
    """Segment white cells, classify them and report the blast percentage for an image layer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.analysis: ImageAnalysis | None = None
        self.analysed_image = None
        self.analysed_source: tuple[str, tuple[int, int]] | None = None
        self.result_layer: napari.layers.Labels | None = None
        self.shown_cell: int | None = None

        self.form = parameter_form()
        self.form.margins = (0, 0, 0, 0)  # the page has its own margins
        self.form.threshold.changed.connect(self.recolour)
        self.form.filled.changed.connect(self._draw_cells)
        self.form.image.changed.connect(self._suggest_visible_only)
        self.run_button = shortcut_button("Run", RUN, self.run)
        self.runner = TaskRunner()
        self.summary = QLabel("No result yet.")
        self.summary.setWordWrap(True)
        self.legend = Legend("Classes")
        self.legend.hide()
        self.review_button = QPushButton("Send to review…")
        self.review_button.setToolTip("Put every detected cell into a review project for the Gallery.")
        self.review_button.setEnabled(False)
        self.review_button.clicked.connect(self._choose_review_project)
        self.crop_view = QLabel()
        self.crop_view.setFixedSize(CROP_VIEW_SIDE, CROP_VIEW_SIDE)
        self.cell_info = QLabel(NO_CELL_SHOWN)
        self.cell_info.setWordWrap(True)
        self.cell_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # the text wraps to whatever width is left beside the crop; it never widens the page
        self.cell_info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        cell_row = QHBoxLayout()
        cell_row.addWidget(self.crop_view)
        cell_row.addWidget(self.cell_info)
        layout = scrolling_layout(self)
        for widget in (
            self.form.native, self.run_button, self.runner, self.summary, self.legend, self.review_button
        ):
            layout.addWidget(widget)
        layout.addLayout(cell_row)
        layout.addStretch()
        bind_button_keys(self)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # --- input -----------------------------------------------------------------------------------------
    def _image_layers(self) -> list[napari.layers.Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def _refresh_layers(self, event=None) -> None:
        self.form.image.choices = tuple(layer.name for layer in self._image_layers())

    def _selected_layer(self) -> napari.layers.Image | None:
        name = self.form.image.value
        return next((layer for layer in self._image_layers() if layer.name == name), None)

    def _suggest_visible_only(self, *args) -> None:
        layer = self._selected_layer()
        self.form.visible_only.value = bool(layer is not None and layer.multiscale)

    def _model_dir(self) -> Path | None:
        return self.form.model.value

    def _input_region(self, layer: napari.layers.Image) -> tuple[object, tuple[int, int]]:
        """Return the pixels to analyse (level 0) and their offset in the layer's data coordinates."""
        data = layer.data[0] if layer.multiscale else layer.data
        if not layer.rgb:
            raise InputError(
                f"Layer '{layer.name}' is not an RGB image; blast detection needs the colour image of a "
                "stained smear."
            )
        rows, cols = slice(0, data.shape[0]), slice(0, data.shape[1])
        if self.form.visible_only.value:
            rows, cols = _visible_window(layer, data.shape[:2])
        if (rows.stop - rows.start) * (cols.stop - cols.start) > MAX_PIXELS:
            raise InputError(
                f"Layer '{layer.name}' is too large to analyse at once here; zoom in and tick 'Visible field "
                "only', or run 'napari-hematology analyze FILE --out DIR' on the file."
            )
        return data[rows, cols], (rows.start, cols.start)

    # --- running ---------------------------------------------------------------------------------------
    def run(self) -> None:
        """Analyse the chosen image layer in the background."""
        layer = self._selected_layer()
        if layer is None:
            show_info("Open a smear image first (File > Open, or File > Open Sample > Hematology).")
            return
        try:
            region, offset = self._input_region(layer)
        except HematologyError as error:
            report_error(error)
            return
        self.runner.start(
            _analyze_region,
            region,
            self._model_dir(),
            {
                "name": layer.name,
                "user_um": self.form.pixel_size.value or None,
                "metadata_um": layer.metadata.get("pixel_size_um"),
                "metadata_source": layer.metadata.get("pixel_size_source"),
            },
            blast_threshold=self.form.threshold.value,
            on_done=lambda analysis: self._show_result(analysis, region, layer, offset),
        )

    def _show_result(self, analysis: ImageAnalysis, image, source, offset: tuple[int, int]) -> None:
        self.analysis, self.analysed_image = analysis, image
        self.analysed_source = (source.source.path or source.name, offset)
        self.review_button.setEnabled(not analysis.cells.empty)
        self.shown_cell = None
        name = f"{source.name}{LAYER_SUFFIX}"
        scale = np.asarray(source.scale)[-2:]
        translate = np.asarray(source.translate)[-2:] + np.asarray(offset) * scale
        labels = np.asarray(analysis.labels)
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.result_layer = self.viewer.add_labels(labels, name=name, scale=scale, translate=translate)
        self.result_layer.mouse_drag_callbacks.append(self._on_click)
        self._draw_cells()
        self.recolour()
        if analysis.cells.empty:
            show_info("No white cells found in this image.")

    # --- review --------------------------------------------------------------------------------------
    def _choose_review_project(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Review project", "", "Projects (*.sqlite)", options=QFileDialog.DontConfirmOverwrite
        )
        if path:
            self.send_to_review(path)

    def send_to_review(self, project: str | Path) -> None:
        """Put every detected cell (slide, centroid, crop, model call) into a review project."""
        from napari_hematology.core.labels.exchange import send_to_review

        if self.analysis is None or self.analysis.cells.empty:
            show_info("Run blast detection first; there are no cells to send.")
            return
        slide, (row, col) = self.analysed_source
        cells = self.analysis.cells
        from napari_hematology.core.cells.analysis import cut_crops

        crops = cut_crops(self.analysed_image, cells)
        placed = cells.assign(centroid_x=cells["centroid_x"] + col, centroid_y=cells["centroid_y"] + row)
        try:
            count = send_to_review(project, slide, placed, crops, self.analysis.classes)
        except HematologyError as error:
            report_error(error)
            return
        show_info(f"{len(cells)} cells sent to {Path(project).name} ({count} in it); open it in Gallery.")

    # --- results ---------------------------------------------------------------------------------------
    def _draw_cells(self, *args) -> None:
        """Draw the cells as class-coloured outlines, or filled when the form says so."""
        if self.result_layer is None:
            return
        filled = self.form.filled.value
        self.result_layer.contour = 0 if filled else OUTLINE_PIXELS
        self.result_layer.opacity = FILLED_OPACITY if filled else 1.0

    def recolour(self, *args) -> None:
        """Re-call classes for the current threshold, re-colour the layer, the legend, summary and cell."""
        if self.analysis is None or self.result_layer is None:
            return
        import pandas as pd
        from napari.utils.colormaps import DirectLabelColormap

        from napari_hematology.core.cells.analysis import call_classes, summarize

        cells = self.analysis.cells
        classes = self.analysis.classes
        if not cells.empty:
            cells["label"] = call_classes(cells, classes, self.form.threshold.value)
        colours = class_colours([*classes, *sorted(set(cells.get("label", [])) - set(classes))])
        mapping = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        for cell in cells.itertuples():
            mapping[int(cell.cell_id)] = colours[cell.label]
        self.result_layer.colormap = DirectLabelColormap(color_dict=mapping)
        self.result_layer.features = cells.assign(index=cells["cell_id"]) if not cells.empty else cells
        summary = summarize(cells.get("label", pd.Series(dtype=object)), classes, cells.get(QUALITY))
        lines = [_summary_text(summary), *_unfamiliar_note(cells), self.analysis.pixel_size.note]
        self.summary.setText("\n".join(line for line in lines if line))
        self.legend.set_colours({name: colours[name] for name in classes})
        self._show_cell_panel()

    def _on_click(self, layer, event) -> None:
        value = layer.get_value(event.position, world=True)
        if value:
            self.show_cell(int(value))

    def show_cell(self, cell_id: int) -> None:
        """Show the crop, class and probabilities of one cell (kept up to date until another is shown)."""
        self.shown_cell = cell_id
        self._show_cell_panel()

    def _show_cell_panel(self) -> None:
        rows = None
        if self.analysis is not None and self.shown_cell is not None:
            rows = self.analysis.cells[self.analysis.cells["cell_id"] == self.shown_cell]
        if rows is None or rows.empty:
            self.crop_view.clear()
            self.cell_info.setText(NO_CELL_SHOWN)
            return
        from napari_hematology.core.cells.analysis import cut_crops

        (crop,) = cut_crops(self.analysed_image, rows)
        self.crop_view.setPixmap(_pixmap(crop, CROP_VIEW_SIDE))
        cell = rows.iloc[0]
        probabilities = sorted(
            ((name, float(cell[f"prob_{name}"])) for name in self.analysis.classes), key=lambda item: -item[1]
        )
        lines = [
            f"Cell {self.shown_cell}: {cell['label']}",
            f"N/C ratio {cell['nc_ratio']:.2f}, area {cell['area']} px",
        ]
        lines += [f"{name}: {value:.2f}" for name, value in probabilities]
        self.cell_info.setText("\n".join(lines))


def _visible_window(layer, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of level 0 that the canvas currently shows."""
    corners = np.asarray(layer.corner_pixels)[:, -2:].astype(float)
    factor = np.asarray(layer.downsample_factors[layer.data_level])[-2:] if layer.multiscale else 1.0
    (y0, x0) = np.floor(corners[0] * factor).astype(int)
    (y1, x1) = np.ceil((corners[1] + 1) * factor).astype(int)
    rows = slice(int(np.clip(y0, 0, shape[0])), int(np.clip(y1, 0, shape[0])))
    cols = slice(int(np.clip(x0, 0, shape[1])), int(np.clip(x1, 0, shape[1])))
    if rows.stop - rows.start < 16 or cols.stop - cols.start < 16:
        return slice(0, shape[0]), slice(0, shape[1])
    return rows, cols


def _analyze_region(
    region, model_dir: Path | None, pixel_size_sources: dict, progress, should_stop, **options
) -> ImageAnalysis:
    """Load the classifier, find the region's pixel size and analyse the region, in the worker.

    The classifier is loaded once per process; the pixel size is read from the red cells when unknown.
    napari never waits for either.
    """
    from napari_hematology.core.cells.analysis import analyze_image
    from napari_hematology.core.cells.magnification import find_pixel_size

    progress(0, 0, LOADING_MODEL)
    prepare_summaries()
    classifier = get_classifier(model_dir)
    pixel_size = find_pixel_size(region, **pixel_size_sources)
    return analyze_image(
        region, classifier, pixel_size=pixel_size, progress=progress, should_stop=should_stop, **options
    )


def get_classifier(model_dir: Path | None = None):
    """The cell classifier of ``model_dir`` (the shipped one for None), loaded once per process."""
    from napari_hematology.core.cells.analysis import get_classifier as load

    return load(model_dir)


def _unfamiliar_note(cells: pd.DataFrame) -> list[str]:
    """A line of advice when many cells look unlike the classifier's training cells; none otherwise."""
    import pandas as pd

    from napari_hematology.core.cells.classify_files import unfamiliar_batch_note

    note = unfamiliar_batch_note(cells.get("atypical_score", pd.Series(dtype=float)))
    return [f"{note} Send them to review and retrain on the corrections."] if note else []


def _summary_text(summary: dict) -> str:
    """The counts, the blast percentage with its 95% interval and warnings, and the cells left out."""
    return "\n".join(summary_lines(summary))


def _pixmap(crop: np.ndarray, side: int) -> QPixmap:
    from napari_hematology.core.io import to_rgb8

    rgb = np.ascontiguousarray(to_rgb8(crop, "crop")[0])
    image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy()).scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio)
