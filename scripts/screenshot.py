"""Make docs/images/screenshot.png: the bundled smear field after blast detection, with the widget docked.

Run under a display (e.g. ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py``).
"""

from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_hematology.core.cells.samples import sample_fields
from napari_hematology.widgets.blast import BlastDetectionWidget

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "screenshot.png"


def main() -> None:
    """Run blast detection on the sample field in a visible viewer and save a screenshot."""
    viewer = napari.Viewer(title="napari-hematology")
    viewer.window.resize(1500, 850)
    viewer.open(str(sample_fields()[1]))
    widget = BlastDetectionWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Blast detection", area="right")
    viewer.window._qt_window.resizeDocks([dock], [470], Qt.Orientation.Horizontal)
    widget.run()
    while widget.runner.busy:
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main()
