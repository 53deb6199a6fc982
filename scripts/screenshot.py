"""Screenshots of napari with the plugin, for the docs: every dock, in a 1280x800 window, on the samples.

Writes ``docs/images/docks/<dock>.png`` (one per page of the Hematology workspace, the page in front, after
running it on the bundled samples where it can run alone, and Expression and Cytometry on public data
from ``../shared/data`` (or $NAPARI_HEMATOLOGY_DATA) where it is present) and ``docs/images/screenshot.png``
(Blast detection, for the README). Run under a display, e.g.::

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python scripts/screenshot.py
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication, QScrollArea, QWidget

from napari_hematology.core.cells.samples import sample_fields
from napari_hematology.widgets.whole_slide import WHOLE_SLIDE

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "images"
DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", REPO.parent / "shared" / "data"))
EXPRESSION_FILE = DATA / "expression" / "pbmc68k_reduced.h5ad"  # 700 PBMCs, 10 labelled types
CYTOMETRY_FILE = DATA / "cytometry" / "flowsom" / "ff.fcs"  # FlowSOM's example file
WINDOW = (1280, 800)
DOCKS = (
    "Blast detection", "Gallery", "Review labels", "Slide prediction", "Whole slide", "Expression",
    "Cytometry",
)


def settle(seconds: float = 0.5) -> None:
    """Let napari draw."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait(runner, timeout: float = 600) -> None:
    """Wait for a dock's task to finish, keeping napari drawing."""
    end = time.monotonic() + timeout
    while runner.busy and time.monotonic() < end:
        settle(0.1)


def shoot(viewer, dock, name: str, show: QWidget | None = None) -> Path:
    """Bring ``dock``'s page to the front (scrolled to ``show``) and save the whole window."""
    dock.parentWidget().raise_()
    settle(0.3)
    if show is not None:
        dock.findChild(QScrollArea).ensureWidgetVisible(show, 0, 0)
    settle(0.8)
    path = DOCS / "docks" / f"{re.sub(r'[^a-z0-9]+', '_', name.lower())}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(path)
    return path


def main() -> None:
    """Open every dock in one window, run them on the samples and save one screenshot per page."""
    viewer = napari.Viewer(title="napari-hematology")
    viewer.window.resize(*WINDOW)
    field = Path(sample_fields()[1])
    viewer.open(str(field), plugin="napari-hematology")
    docks = {name: viewer.window.add_plugin_dock_widget("napari-hematology", name)[1] for name in DOCKS}
    settle(1.0)
    work = Path(tempfile.mkdtemp(prefix="napari-hematology-screenshots-"))

    blast = docks["Blast detection"]
    blast.form.image.value = field.stem
    blast.run()
    wait(blast.runner)
    viewer.reset_view()
    if len(blast.analysis.cells):
        blast.show_cell(int(blast.analysis.cells["cell_id"].iloc[0]))
    shoot(viewer, blast, "Blast detection")
    viewer.screenshot(str(DOCS / "screenshot.png"), canvas_only=False, flash=False)

    project = work / "review.sqlite"
    blast.send_to_review(project)
    review = docks["Review labels"]
    review.project_bar.annotator.setText("reviewer")
    review.project_bar.open_project(project)
    shoot(viewer, review, "Review labels")

    gallery = docks["Gallery"]
    gallery.annotator.setText("reviewer")
    gallery.open_project(project)
    gallery.next_page()
    while gallery.loading:
        settle(0.1)
    shoot(viewer, gallery, "Gallery")
    for name in ("gallery", "gallery cells", "review cell"):
        if name in viewer.layers:
            viewer.layers.remove(name)
    viewer.reset_view()

    whole = docks["Whole slide"]
    whole.form.slide.value = field.stem
    whole.form.regions.value = WHOLE_SLIDE
    whole.form.out.value = work / "whole_slide"
    whole.analyse()
    wait(whole.runner)
    shoot(viewer, whole, "Whole slide")
    whole.worker.close()

    shoot(viewer, docks["Slide prediction"], "Slide prediction")  # needs a trained bag model
    expression, cytometry = docks["Expression"], docks["Cytometry"]
    viewer.layers.clear()  # the expression and cytometry pages show no smear
    if EXPRESSION_FILE.is_file():
        expression.path_edit.setText(str(EXPRESSION_FILE))
        expression.load_data()
        wait(expression.runner)
        expression.train()
        wait(expression.runner)
        while expression.confusion.drawing:
            settle(0.1)
        viewer.reset_view()
    shoot(viewer, expression, "Expression", show=expression.confusion)
    viewer.layers.clear()
    if CYTOMETRY_FILE.is_file():
        cytometry.load_files([CYTOMETRY_FILE])
        wait(cytometry.runner)
        cytometry.run()
        wait(cytometry.runner)
        while cytometry.scatter_plot.drawing or cytometry.shares_plot.drawing:
            settle(0.1)
    shoot(viewer, cytometry, "Cytometry", show=cytometry.scatter_plot)
    viewer.close()


if __name__ == "__main__":
    main()
