"""Measure napari's longest GUI-thread stall while every dock opens and runs on the samples.

Run in a fresh interpreter (so torch's import, if it happened in the GUI thread, would be measured) by
``test_gui_stalls.py``, or by hand under a display::

    xvfb-run -a .venv/bin/python tests/gui_stalls.py FOLDER

``FOLDER`` holds what the docks need that takes torch to make (``test_gui_stalls.prepare``): a bag model
(``mil``), an expression table (``cells.csv``) and FCS files (``*.fcs``). A timer ticks every 10 ms in the
GUI thread; a stall is how much later than due a tick comes. napari's own one-time costs (its first layer
of each kind) are paid before the timer starts. Prints a JSON report: the longest stall, the longest per
step, whether torch was imported while no task ran, and which heavy packages (:data:`HEAVY`) each step
imported in the GUI thread (the plugin imports them in its workers).
"""

from __future__ import annotations

import builtins
import json
import sys
import threading
import time
from pathlib import Path

TICK_MS = 10
# packages that take a second or more to import: the plugin's workers import them, never napari's GUI thread
HEAVY = ("torch", "timm", "scipy.stats", "scipy.optimize", "skimage", "sklearn", "cleanlab", "anndata",
         "matplotlib")


class GuiImports:
    """Records the heavy packages first imported by the GUI thread, per step (``self.found``)."""

    def __init__(self) -> None:
        self.step = "start"
        self.found: dict[str, list[str]] = {}
        self.gui = threading.get_ident()
        self._original = builtins.__import__
        builtins.__import__ = self._import

    def _import(self, name, *args, **kwargs):
        # no import statement here: it would call this again
        if threading.get_ident() == self.gui and name not in sys.modules:
            heavy = next((package for package in HEAVY if name == package or name.startswith(f"{package}.")),
                         None)
            if heavy is not None and heavy not in sys.modules:
                found = self.found.setdefault(self.step, [])
                if heavy not in found:
                    found.append(heavy)
        return self._original(name, *args, **kwargs)

    def close(self) -> None:
        builtins.__import__ = self._original


class StallMonitor:
    """A 10 ms timer in the GUI thread that records how late each tick comes, per named step.

    With ``stacks``, a watchdog thread also records where the GUI thread is whenever a tick is 100 ms late
    (``self.stacks``: step -> a count per stack), to find what stalls.
    """

    def __init__(self, stacks: bool = False) -> None:
        from qtpy.QtCore import QTimer

        self.step = "start"
        self.worst: dict[str, float] = {}
        self.stacks: dict[str, dict[str, int]] = {}
        self.imports = GuiImports()
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()
        if stacks:
            self.gui_thread = threading.get_ident()
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        import traceback

        while True:
            time.sleep(0.05)
            if time.perf_counter() - self.last > 0.1:
                frame = sys._current_frames().get(self.gui_thread)
                if frame is None:
                    continue
                stack = traceback.extract_stack(frame)
                lines = [f"{Path(each.filename).name}:{each.lineno} {each.name}" for each in stack]
                key = " < ".join(reversed(lines[-8:]))
                counts = self.stacks.setdefault(self.step, {})
                counts[key] = counts.get(key, 0) + 1

    def _tick(self) -> None:
        now = time.perf_counter()
        late = max(0.0, (now - self.last) * 1000 - TICK_MS)
        self.last = now
        self.worst[self.step] = max(self.worst.get(self.step, 0.0), late)

    def enter(self, step: str) -> None:
        """Count the stalls (and heavy imports) from now on under ``step``."""
        self._tick()  # what came before belongs to the step before
        self.step = step
        if self.imports is not None:
            self.imports.step = step
        print(f"step: {step}", file=sys.stderr, flush=True)


def settle(ms: int) -> None:
    """Run napari's event loop for ``ms`` milliseconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_until(condition, timeout_s: float, what: str) -> None:
    """Run the event loop until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish in {timeout_s:.0f} s")
        settle(20)


def _warm_up_napari(viewer) -> None:
    """Pay napari's own one-time costs before the timer starts: the first layer of each kind compiles its
    shaders (slow under software OpenGL) and the first layer builds the unit registry. Any plugin, or
    opening any image, pays them once; they are not the plugin's stalls. The first dock of any kind
    builds napari's dock area, paid here with a plain label."""
    import numpy as np
    from qtpy.QtWidgets import QLabel

    layers = [
        viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True),
        viewer.add_image(np.zeros((32, 32), np.float32)),
        viewer.add_labels(np.zeros((32, 32), np.int32)),
        viewer.add_points([[1, 1]], text={"string": ["a"]}),
        viewer.add_shapes([[[0, 0], [5, 5], [0, 5]]], shape_type="polygon"),
    ]
    dock = viewer.window.add_dock_widget(QLabel("warm-up"), name="warm-up")
    settle(1500)
    for layer in layers:
        viewer.layers.remove(layer)
    viewer.window.remove_dock_widget(dock)
    settle(300)


def main(folder: Path, stacks: bool = False) -> dict:
    """Open every dock and run each on the samples; return the stalls measured."""
    import napari

    from napari_hematology.core.cells.samples import sample_fields
    from napari_hematology.widgets.whole_slide import WHOLE_SLIDE

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    _warm_up_napari(viewer)
    monitor = StallMonitor(stacks)
    torch_before_tasks = {}

    monitor.enter("open the sample field")
    field = Path(sample_fields()[0])
    viewer.open(str(field), plugin="napari-hematology")
    settle(200)
    docks = {}
    for name in ("Blast detection", "Slide prediction", "Whole slide", "Review labels", "Gallery",
                 "Expression", "Cytometry"):
        monitor.enter(f"open {name}")
        docks[name] = viewer.window.add_plugin_dock_widget("napari-hematology", name)[1]
        settle(200)
    torch_before_tasks["after opening every dock"] = "torch" in sys.modules

    monitor.enter("Blast detection: run")
    blast = docks["Blast detection"]
    blast.form.image.value = field.stem
    blast.run()
    wait_until(lambda: not blast.runner.busy, 300, "blast detection")
    settle(200)
    assert blast.analysis is not None, "blast detection gave no result"

    monitor.enter("Blast detection: send to review")
    project = folder / "review.sqlite"
    blast.send_to_review(project)
    settle(200)

    monitor.enter("Gallery: page, move, undo")
    gallery = docks["Gallery"]
    gallery.annotator.setText("dr_a")
    gallery.open_project(project)
    gallery.next_page()
    settle(200)
    gallery.cells_layer.selected_data = {0}
    gallery.move_selected(gallery.classes[0])
    settle(50)
    gallery.undo()
    settle(200)

    monitor.enter("Review labels: open project")
    review = docks["Review labels"]
    review.project_bar.annotator.setText("dr_a")
    review.project_bar.open_project(project)
    settle(200)

    monitor.enter("Slide prediction: predict")
    slide = docks["Slide prediction"]
    slide.image_combo.setCurrentText(field.stem)
    slide.labels_combo.setCurrentText(f"{field.stem} cells")
    slide.model_edit.setText(str(folder / "mil"))
    slide.predict()
    wait_until(lambda: not slide.runner.busy, 300, "slide prediction")
    settle(200)

    monitor.enter("Whole slide: analyse")
    whole = docks["Whole slide"]
    whole.form.slide.value = field.stem
    whole.form.regions.value = WHOLE_SLIDE
    whole.form.out.value = folder / "whole_slide"
    whole.analyse()
    wait_until(lambda: not whole.runner.busy, 300, "whole-slide analysis")
    settle(200)

    monitor.enter("Expression: load and train")
    expression = docks["Expression"]
    expression.path_edit.setText(str(folder / "cells.csv"))
    expression.load_data()
    # the runner is busy until its finished signal, which comes after the data (else Train is refused)
    wait_until(lambda: expression.data is not None and not expression.runner.busy, 60,
               "reading the expression file")
    expression.label_combo.setCurrentText("lineage")
    expression.epochs_spin.setValue(2)
    expression.train()
    wait_until(lambda: not expression.runner.busy, 300, "expression training")
    settle(200)

    monitor.enter("Cytometry: load and run")
    cytometry = docks["Cytometry"]
    cytometry.load_files(sorted(folder.glob("*.fcs")))
    wait_until(lambda: not cytometry.runner.busy, 60, "reading FCS files")
    cytometry.clusters_spin.setValue(2)
    cytometry.epochs_spin.setValue(4)
    cytometry.run()
    wait_until(lambda: not cytometry.runner.busy, 300, "cytometry clustering")
    settle(200)
    monitor.enter("end")
    monitor.imports.close()

    results = {
        "longest_stall_ms": round(max(monitor.worst.values()), 1),
        "per_step_ms": {step: round(ms, 1) for step, ms in monitor.worst.items()},
        "torch_in_gui_before_tasks": torch_before_tasks,
        "heavy_imports_in_gui": monitor.imports.found,
        "results": {
            "blast cells": int(len(blast.analysis.cells)),
            "slide predicted": slide.result_label.text(),
            "whole slide cells": int(len(whole.cells)),
            "expression model": expression.model is not None,
            "cytometry result": cytometry.result is not None,
        },
    }
    if stacks:
        results["stacks"] = {
            step: sorted(counts.items(), key=lambda item: -item[1])[:6]
            for step, counts in monitor.stacks.items()
        }
    whole.worker.close()
    viewer.close()
    return results


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), stacks="--stacks" in sys.argv)))
