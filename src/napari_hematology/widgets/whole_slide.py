"""The "Whole slide" dock: analyse a whole slide in the background, tile by tile, while looking at it.

Cells appear on the canvas as a Points layer (slide coordinates, class colours, a ``features`` table) as
each tile is done, and the summary counts grow with them. The run reads the smear's reading area by
default (found automatically and shown as an editable Shapes layer), a Shapes layer the user chooses (drawn
in napari or imported from QuPath GeoJSON) or every stained tile. Cancel keeps what was found; Resume
continues the run from its checkpoint. Cells export to QuPath GeoJSON.

The run itself goes on in a separate process
(:class:`~napari_hematology.core.whole_slide.worker.SlideWorker`), started when *Analyse* is first pressed
and kept for the next runs; napari's drawing never waits for the segmentation or the classifier. The run
starts with the tile nearest the centre of the view. The dock imports the analysis only when a run needs it,
so it opens at once.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox
from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QWidget

from napari_hematology.core.cells.classes import CELL_CLASSES
from napari_hematology.core.errors import HematologyError, InputError
from napari_hematology.core.whole_slide.outputs import has_checkpoint, slide_stem
from napari_hematology.widgets._keys import RUN, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import fit_names, model_folder_field, scrolling_layout
from napari_hematology.widgets._legend import Legend
from napari_hematology.widgets._palette import class_colours
from napari_hematology.widgets._runner import TaskRunner, report_error
from napari_hematology.widgets._summaries import summary_lines

if TYPE_CHECKING:
    import pandas as pd

    from napari_hematology.core.whole_slide.analysis import SlideAnalysis, TileUpdate

READING_AREA = "Reading area (automatic)"
WHOLE_SLIDE = "Every stained tile"
FLUSH_MS = 1000
CELL_OPACITY = 0.8
EDGE_FRACTION = 500
FEATURE_COLUMNS = ("cell_id", "label", "blast_probability", "area", "nucleus_area", "nc_ratio", "tile")
FOUND = "found, classifying…"  # the label of cells shown before the classifier has loaded
FOUND_COLOUR = "#9e9e9e"


def SlideWorker(**options):  # noqa: N802 (stands for the class, imported when a run first needs it)
    """A new :class:`~napari_hematology.core.whole_slide.worker.SlideWorker` (nothing started yet)."""
    from napari_hematology.core.whole_slide.worker import SlideWorker as worker_class

    return worker_class(**options)


def WholeSlideConfig(**options):  # noqa: N802 (stands for the class, imported when a run first needs it)
    """A :class:`~napari_hematology.core.whole_slide.analysis.WholeSlideConfig` with ``options``."""
    from napari_hematology.core.whole_slide.analysis import WholeSlideConfig as config_class

    return config_class(**options)


def _run_in_process(worker, *args, **options):
    """Run the analysis in the worker process; this thread first imports what showing its counts needs."""
    from napari_hematology.widgets._summaries import prepare

    prepare()
    return worker.run(*args, **options)


class _Signals(QObject):
    tile_done = Signal(object)
    cells_found = Signal(object)
    regions_found = Signal(object)


def _to_slide_pixels(shape: np.ndarray, layer, image) -> np.ndarray:
    """A shape's vertices in the slide's full-resolution pixels (both layers may be scaled or moved)."""
    world = shape * np.asarray(layer.scale) + np.asarray(layer.translate)
    return (world - np.asarray(image.translate)) / np.asarray(image.scale)


def settings_form() -> Container:
    """The magicgui form: slide, where to read, how many white cells, output folder and model."""
    slide = ComboBox(name="slide", label="Slide", choices=())
    regions = ComboBox(name="regions", label="Read in", choices=(READING_AREA, WHOLE_SLIDE))
    fit_names(slide.native)
    fit_names(regions.native)
    return Container(
        widgets=[
            slide,
            regions,
            SpinBox(
                name="cells",
                label="White cells",
                value=0,
                min=0,
                max=100_000,
                step=100,
                tooltip="Stop after this many white cells (100 or 200: a differential); 0 counts every cell.",
            ),
            FileEdit(
                name="out",
                label="Output folder",
                mode="d",
                nullable=True,
                tooltip="Where the cell table, checkpoint, summary and GeoJSON go; empty: next to the slide.",
            ),
            model_folder_field(),
        ]
    )


class WholeSlideWidget(QWidget):
    """Run the white-cell analysis over a whole slide with live cells, cancel and resume."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.cells: pd.DataFrame | None = None  # the cells shown; None before any run or import
        self._found: pd.DataFrame | None = None  # cells found while the classifier loads, until classified
        self.cells_layer: napari.layers.Points | None = None
        self.result: SlideAnalysis | None = None
        self._pending: list[TileUpdate] = []
        self._last_flush = -math.inf
        self._last_run: dict | None = None
        self._signals = _Signals()
        self._signals.tile_done.connect(self._queue_tile)
        self._signals.cells_found.connect(self._show_found)
        self._signals.regions_found.connect(self._show_regions)
        self.worker = None  # the process starts when Analyse is first pressed
        self._workers: list = []  # for closing it when the dock goes (self is gone by then)
        self.destroyed.connect(lambda *_, workers=self._workers: [worker.close() for worker in workers])
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.timeout.connect(self._flush)

        self.form = settings_form()
        self.form.margins = (0, 0, 0, 0)  # the page has its own margins
        self.area_button = shortcut_button("Find reading area", None, self.find_reading_area)
        self.import_button = shortcut_button("Import GeoJSON…", None, self._ask_import)
        self.analyse_button = shortcut_button("Analyse whole slide", RUN, self.analyse)
        self.resume_button = shortcut_button("Resume", None, self.resume)
        self.export_button = shortcut_button("Export GeoJSON…", None, self._ask_export)
        self.runner = TaskRunner(uses_torch=False)  # the classifier runs in the worker process
        self.summary = QLabel("Open a slide (File > Open), then press Analyse whole slide.")
        self.summary.setWordWrap(True)
        self.legend = Legend("Classes")
        self.legend.set_colours({})

        layout = scrolling_layout(self)
        layout.addWidget(self.form.native)
        for row in (
            (self.area_button, self.import_button),
            (self.analyse_button,),
            (self.resume_button, self.export_button),
        ):
            line = QHBoxLayout()
            for button in row:
                line.addWidget(button)
            layout.addLayout(line)
        layout.addWidget(self.runner)
        layout.addWidget(self.summary)
        layout.addWidget(self.legend)
        layout.addStretch()
        bind_button_keys(self)

        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)
        self.form.slide.changed.connect(self._update_buttons)
        self.form.out.changed.connect(self._update_buttons)
        self._refresh_choices()

    # ----------------------------------------------------------------------------------------- choices
    def _refresh_choices(self, *args) -> None:
        slides = [layer.name for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]
        shapes = [layer.name for layer in self.viewer.layers if isinstance(layer, napari.layers.Shapes)]
        self._set_choices(self.form.slide, slides)
        self._set_choices(self.form.regions, [READING_AREA, WHOLE_SLIDE, *shapes])
        self._update_buttons()

    def _started_worker(self):
        """The worker process, made on the first run (it loads the classifier while the run begins)."""
        if self.worker is None:
            self.worker = SlideWorker()
            self._workers.append(self.worker)
        return self.worker

    @staticmethod
    def _set_choices(combo: ComboBox, names: list[str]) -> None:
        current = combo.value
        combo.choices = names
        if current in names:
            combo.value = current

    def _slide_layer(self) -> napari.layers.Image:
        name = self.form.slide.value
        if not name or name not in self.viewer.layers:
            raise InputError("Open a slide first (File > Open), then choose it under Slide.")
        return self.viewer.layers[name]

    def _slide_path(self) -> Path:
        layer = self._slide_layer()
        path = layer.metadata.get("path") or layer.source.path
        if not path:
            raise InputError(
                f"Layer '{layer.name}' was not opened from a file; whole-slide analysis reads the slide file "
                "tile by tile, so open the slide with File > Open."
            )
        return Path(path)

    def _out_dir(self) -> Path:
        path = self._slide_path()
        chosen = self.form.out.value
        return Path(chosen) if chosen else path.with_name(f"{slide_stem(path)}_hematology")

    def _view_centre(self) -> tuple[float, float]:
        """The centre of the view in the slide's full-resolution pixels, ``(y, x)``."""
        image = self._slide_layer()
        centre = np.asarray(self.viewer.scene.camera.center)[-2:]
        y, x = (centre - np.asarray(image.translate)[-2:]) / np.asarray(image.scale)[-2:]
        return float(y), float(x)

    def _update_buttons(self, *args) -> None:
        try:
            resumable = has_checkpoint(self._out_dir(), slide_stem(self._slide_path()))
        except (HematologyError, OSError, ValueError):
            resumable = False
        self.resume_button.setEnabled(resumable and not self.runner.busy)
        self.analyse_button.setEnabled(not self.runner.busy)
        self.export_button.setEnabled(self.cells is not None and not self.cells.empty)

    # ------------------------------------------------------------------------------------------ regions
    def _regions(self) -> tuple[list[np.ndarray] | None, bool]:
        """The polygons to read in (slide pixels) and whether to find the reading area instead."""
        choice = self.form.regions.value
        if choice == READING_AREA:
            return None, True
        if choice == WHOLE_SLIDE:
            return None, False
        layer = self.viewer.layers[choice]
        image = self._slide_layer()
        polygons = [_to_slide_pixels(shape, layer, image) for shape in layer.data]
        if not polygons:
            raise InputError(f"Shapes layer '{choice}' is empty; draw or import the regions to read first.")
        return polygons, False

    def _show_regions(self, polygons: list[np.ndarray], name: str | None = None) -> napari.layers.Shapes:
        image = self._slide_layer()
        name = name or f"{image.name} reading area"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_shapes(
            [np.asarray(polygon) for polygon in polygons],
            shape_type="polygon",
            name=name,
            edge_color="#00e5ff",
            edge_width=max(2.0, image.level_shapes[0][1] / EDGE_FRACTION),
            face_color="transparent",
            scale=image.scale,
            translate=image.translate,
        )
        self.form.regions.value = name
        return layer

    def find_reading_area(self) -> None:
        """Find the smear's monolayer in the background and show it as an editable Shapes layer."""
        from napari_hematology.core.io import read_image
        from napari_hematology.core.whole_slide.reading_area import find_reading_area

        def run(path, progress=None, should_stop=None):
            return find_reading_area(read_image(path), progress=progress, should_stop=should_stop)

        try:
            path = self._slide_path()
        except HematologyError as error:
            report_error(error)
            return
        self.runner.start(run, path, on_done=self._reading_area_found, on_finished=self._update_buttons)

    def _reading_area_found(self, area) -> None:
        for note in area.notes:
            show_info(note)
        if area.polygons:
            self._show_regions(area.polygons)

    # ----------------------------------------------------------------------------------------- analysis
    def analyse(self) -> None:
        """Start a new run over the slide (cells of an earlier run in the output folder are replaced)."""
        self._run(resume=False)

    def resume(self) -> None:
        """Continue the unfinished run of this slide from its checkpoint."""
        self._run(resume=True)

    def _run(self, resume: bool) -> None:
        if self.runner.busy:
            show_info("Still working on the previous task; wait for it or press Cancel.")
            return
        try:
            path, out_dir = self._slide_path(), self._out_dir()
            regions, reading_area = self._regions()
        except HematologyError as error:
            report_error(error)
            return
        self.cells = self._found = None
        self._pending.clear()
        self._remove_cells_layer()
        config = WholeSlideConfig(max_white_cells=self.form.cells.value or None)
        first = self.worker is None
        self.summary.setText(
            ("Starting the analysis process and loading the classifier… " if first else "")
            + ("Resuming…" if resume else "Reading the slide…")
        )
        self.runner.start(
            _run_in_process,
            self._started_worker(),
            path,
            out_dir,
            model_dir=self.form.model.value or None,
            regions=regions,
            reading_area=reading_area,
            config=config,
            resume=resume,
            start_near=self._view_centre(),
            on_regions=self._signals.regions_found.emit if reading_area else None,
            on_found=self._signals.cells_found.emit,
            on_tile=self._signals.tile_done.emit,
            on_done=self._on_done,
            on_finished=self._on_finished,
        )
        self._update_buttons()

    def _queue_tile(self, update: TileUpdate) -> None:
        """Draw at once if the last drawing is ``FLUSH_MS`` old, else when it will be."""
        self._pending.append(update)
        if not self._flush_timer.isActive():
            since_ms = (time.monotonic() - self._last_flush) * 1000
            self._flush_timer.start(int(max(0.0, FLUSH_MS - since_ms)))

    def _flush(self) -> None:
        """Draw the cells of the tiles finished since the last flush (at most every ``FLUSH_MS``)."""
        if not self._pending:
            return
        self._last_flush = time.monotonic()
        updates, self._pending = self._pending, []
        new = [update.cells for update in updates if len(update.cells)]
        if new:
            import pandas as pd

            self.cells = (
                pd.concat([self.cells, *new], ignore_index=True)
                if self.cells is not None and len(self.cells) else pd.concat(new)
            )
            self._found = None  # the classifier has loaded: the found cells came back classified
            self._draw_cells()
        last = updates[-1]
        self._show_summary(last.summary, f"tiles {last.done}/{last.total}")

    def _show_found(self, cells: pd.DataFrame) -> None:
        """Show cells found before the classifier has loaded, in grey, until they come back classified."""
        import pandas as pd

        self._found = cells if self._found is None else pd.concat([self._found, cells], ignore_index=True)
        self._draw_cells()

    def _on_done(self, result: SlideAnalysis) -> None:
        self._flush()
        self.result = result
        self._found = None
        self.cells = result.cells
        self._draw_cells()
        self._show_summary(result.summary, f"done; results in {result.outputs['cells'].parent}")

    def _on_finished(self) -> None:
        self._flush()
        self._update_buttons()

    # ------------------------------------------------------------------------------------------ display
    def _remove_cells_layer(self) -> None:
        if self.cells_layer is not None and self.cells_layer in self.viewer.layers:
            self.viewer.layers.remove(self.cells_layer)
        self.cells_layer = None

    def _shown_cells(self) -> pd.DataFrame | None:
        """The cells to draw: the classified ones and those found while the classifier loads."""
        if self._found is None:
            return self.cells
        import pandas as pd

        found = self._found.assign(label=FOUND)
        return found if self.cells is None or self.cells.empty else pd.concat([self.cells, found])

    def _draw_cells(self, name: str | None = None) -> None:
        cells = self._shown_cells()
        if cells is None or cells.empty:
            return
        import pandas as pd
        from napari.utils.colormaps.standardize_color import transform_color

        image = self._slide_layer()
        labels = pd.Categorical(cells["label"].astype(str))
        colours = class_colours(list(labels.categories))
        if FOUND in colours:
            colours[FOUND] = FOUND_COLOUR
        coords = cells[["centroid_y", "centroid_x"]].to_numpy(dtype=float)
        rgba = transform_color([colours[name] for name in labels.categories])
        faces = rgba[labels.codes]
        sizes = 2 * np.sqrt(cells["area"].to_numpy(dtype=float) / np.pi) if "area" in cells else 40.0
        features = cells[[column for column in FEATURE_COLUMNS if column in cells]].reset_index(drop=True)
        if self.cells_layer is None or self.cells_layer not in self.viewer.layers:
            self.cells_layer = self.viewer.add_points(
                coords,
                features=features,
                face_color=faces,
                size=sizes,
                border_width=0,
                opacity=CELL_OPACITY,
                name=name or f"{image.name} cells",
                scale=image.scale,
                translate=image.translate,
            )
            self.viewer.layers.selection.active = image
        else:
            self.cells_layer.data = coords
            self.cells_layer.features = features
            self.cells_layer.face_color = faces
            self.cells_layer.size = sizes
        known = [name for name in CELL_CLASSES if name in colours] + sorted(set(colours) - set(CELL_CLASSES))
        self.legend.set_colours({label: colours[label] for label in known})
        self._update_buttons()

    def _show_summary(self, summary: dict, status: str) -> None:
        """Counts, blast percentage with its 95% interval and warnings, cells left out (as the report)."""
        self.summary.setText("\n".join(summary_lines(summary, status)))

    # ------------------------------------------------------------------------------------------ GeoJSON
    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import GeoJSON", "", "GeoJSON (*.geojson *.json)")
        if path:
            self.import_geojson(path)

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export cells as GeoJSON", "", "GeoJSON (*.geojson)")
        if path:
            self.export_geojson(path)

    def import_geojson(self, path: str | Path) -> None:
        """Show a GeoJSON file's regions as a Shapes layer (chosen to read in) and its detections as cells."""
        from napari_hematology.core.whole_slide import geojson

        path = Path(path)
        try:
            collection = geojson.read_geojson(path)
            polygons = geojson.geojson_to_polygons(collection)
            cells = geojson.geojson_to_cells(collection)
        except HematologyError as error:
            report_error(error)
            return
        if polygons:
            self._show_regions(polygons, name=f"{path.stem} regions")
        if len(cells):
            self._remove_cells_layer()
            self.cells = cells
            self._draw_cells(name=f"{path.stem} cells")
        if not polygons and not len(cells):
            show_info(f"{path.name} holds no polygon and no detection.")

    def export_geojson(self, path: str | Path) -> Path:
        """Write the cells shown as QuPath detections."""
        from napari_hematology.core.whole_slide.geojson import cells_to_geojson, write_geojson

        return write_geojson(path, cells_to_geojson(self.cells))

