"""Benchmark of the Whole slide dock on a 20,000 x 20,000 slide, of the GeoJSON round trip and of readers.

- ``gui``: a 20,000 x 20,000 pyramidal OME-TIFF built in /tmp by tiling the bundled BCCD fields (pixel size
  set to the segmentation's reference, so the fields are segmented as they are) is opened in napari under
  Xvfb while a 16 ms timer pans the camera a little at every tick, as a user looking around would. After
  3 s of idle frames the Whole slide dock is opened and *Analyse whole slide* pressed at once (reading area
  found automatically, shipped classifier), so the worker process starts cold: the worst case. The run
  goes to the end; then *Analyse* is pressed again with the worker warm (what a user who opens the dock and
  then chooses settings gets) and cancelled once cells show. Reported: the time until the first cells are on
  the canvas (cold and warm, with when the reading area, the first cells found while the classifier still
  loads, shown grey, and the first classified tile arrived), the frame time
  (interval between timer ticks, each of which moves the camera and repaints) before and during the
  analysis (from pressing *Analyse*; opening the dock is timed apart), the whole run's time, peak memory of
  napari plus its worker process sampled every 50 ms (PSS summed: shared library pages split between them;
  RSS summed: counted in both) and each one's max RSS, napari's RSS once the slide is open, whether torch
  got into napari's process (it should not: the classifier runs in the worker), and the machine's load
  average during the run.
- ``worker``: the whole-slide worker process started cold outside napari on the same 20,000 x 20,000
  slide, three times: seconds from the run's start until the reading area, the first cells found (before
  the classifier loads) and the first classified tile arrive; and, in a fresh interpreter, what the first
  of those seconds go to (importing the worker, opening the slide, finding the reading area).
- ``geojson``: the cells found are exported as QuPath GeoJSON and imported back: same cells and classes.
- ``readers``: on an 8,192 x 8,192 JPEG SVS, open time and the time to read one 2,048 x 2,048 region for
  this package's readers (tifffile, OpenSlide) and, when they are importable, napari-tiff and napari-wsi
  (``pip install .[benchmarks]``) and napari-lazy-openslide (not in the extra: it needs zarr 2, so next to
  this package it records why it cannot be imported), with what each gives napari (levels, pixel size).

- ``lab_day``: the 20,000 x 20,000 mosaic slide through ``slide analyze`` in this process (shipped
  classifier, torch on every core): a 200-cell differential in the reading area, then every cell of the
  reading area; seconds and slides per hour for each.
- ``cluster``: four 4,096 x 4,096 mosaic slides through ``slide analyze`` (reading area, shipped
  classifier) on a local Dask cluster of one worker and then of two, each worker one process of one
  thread: seconds and the speed-up of two workers over one, with the cells of both runs compared.

Run: ``xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/bench_whole_slide.py``
(a few minutes on 2 cores); writes ``benchmarks/results/whole_slide.json``. ``--part gui|readers`` runs one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

RESULTS = Path(__file__).resolve().parent / "results" / "whole_slide.json"
SIDE = 20_000
TILE = 512
LEVELS = 5
TICK_MS = 16
READER_SIDE = 8192
CLUSTER_SLIDES = 4
CLUSTER_SIDE = 4096


def bundled_fields() -> np.ndarray:
    from napari_hematology.core.cells.samples import sample_fields
    from napari_hematology.core.io import read_image

    return np.stack([np.asarray(read_image(path).data)[..., :3] for path in sample_fields()])


def mosaic_tile(fields: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Pixels (ys x xs) of the endless mosaic of fields, each row of fields shifted by three."""
    count, height, width = fields.shape[:3]
    which = ((ys // height)[:, None] * 3 + (xs // width)[None, :]) % count
    return fields[which, (ys % height)[:, None], (xs % width)[None, :]]


def write_mosaic_slide(path: Path, side: int, pixel_size_um: float, levels: int = LEVELS) -> Path:
    """A pyramidal OME-TIFF of the mosaic, tile by tile (never whole in memory)."""
    fields = bundled_fields()

    def tiles(level: int):
        step = 2**level
        size = -(-side // step)
        for y in range(0, size, TILE):
            for x in range(0, size, TILE):
                ys = np.minimum(np.arange(y, y + TILE), size - 1) * step
                xs = np.minimum(np.arange(x, x + TILE), size - 1) * step
                yield mosaic_tile(fields, ys, xs)

    metadata = {"axes": "YXS", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        options = {"tile": (TILE, TILE), "photometric": "rgb", "dtype": np.uint8}
        tif.write(tiles(0), shape=(side, side, 3), subifds=levels - 1, metadata=metadata, **options)
        for level in range(1, levels):
            size = -(-side // 2**level)
            tif.write(tiles(level), shape=(size, size, 3), subfiletype=1, **options)
    return path


def proportional_memory(pid: int) -> int:
    """Bytes of memory a process uses, shared pages split among their users (PSS, from smaps_rollup)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples in a thread the memory of this process and its children (bytes) and the load average.

    RSS counts the pages of shared libraries both load (numpy's, scipy's, Python's) once per process, so
    its sum over-counts; PSS splits them, so its sum is what the two use together.
    """

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self.peak_self = self.peak_children = self.peak_proportional = 0
        self.loads: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            own = self._process.memory_info().rss
            children = proportional = 0
            for child in self._process.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError):  # it may have ended
                    children += child.memory_info().rss
                    proportional += proportional_memory(child.pid)
            proportional += proportional_memory(self._process.pid)
            self.peak_self, self.peak_children = max(self.peak_self, own), max(self.peak_children, children)
            self.peak = max(self.peak, own + children)
            self.peak_proportional = max(self.peak_proportional, proportional)
            self.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
            time.sleep(self._interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def frame_statistics(intervals: list[float]) -> dict:
    values = np.asarray(intervals) * 1000
    if values.size == 0:
        return {}
    return {
        "ticks": int(values.size),
        "median_ms": round(float(np.median(values)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
        "max_ms": round(float(values.max()), 1),
        "share_over_100ms": round(float((values > 100).mean()), 4),
    }


def wait_until(condition: Callable[[], bool], poll_ms: int = 10) -> None:
    """Run the Qt event loop (as napari does, without spinning) until ``condition()`` holds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    check = QTimer()
    check.setInterval(poll_ms)
    check.timeout.connect(lambda: condition() and loop.quit())
    check.start()
    if not condition():
        loop.exec()
    check.stop()


class Moments:
    """Seconds from its creation until each named event first happened."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float | None] = {}

    def mark(self, name: str) -> Callable:
        """A callback (any arguments) that records the first time it is called as ``name``."""
        return lambda *args: self.seconds.setdefault(name, round(time.perf_counter() - self.start, 2))


def time_first_cells(widget, out_dir: Path) -> dict:
    """Press Analyse; seconds until the reading area, the first tile and the first cells drawn arrive."""
    moments = Moments()
    widget._signals.regions_found.connect(moments.mark("reading_area_s"))
    widget._signals.cells_found.connect(moments.mark("first_found_s"))  # found while the classifier loads
    widget._signals.tile_done.connect(moments.mark("first_tile_s"))  # the first classified tile
    widget.form.out.value = out_dir
    widget.analyse()
    shown = lambda: widget.cells_layer is not None and len(widget.cells_layer.data) > 0  # noqa: E731
    wait_until(lambda: shown() or not widget.runner.busy)
    moments.seconds["first_cells_visible_s"] = moments.mark("first_cells_visible_s")() if shown() else None
    return moments.seconds


def measure_gui(slide: Path, out_dir: Path) -> dict:
    """Open the slide in napari, analyse it with the dock, time the first cells and the frames."""
    import napari
    import psutil
    from qtpy.QtCore import QTimer

    from napari_hematology.widgets.whole_slide import WholeSlideWidget

    with PeakMemory() as memory:
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1280, 900)
        viewer.open(str(slide), plugin="napari-hematology")
        slide_open_rss = psutil.Process().memory_info().rss
        ticks: list[float] = []
        ends: list[float] = []
        state = {"last": None, "step": 0}

        def tick() -> None:
            now = time.perf_counter()
            if state["last"] is not None:
                ticks.append(now - state["last"])
                ends.append(now)
            state["last"] = now
            state["step"] += 1
            camera = viewer.scene.camera
            centre = np.asarray(camera.center)
            camera.center = tuple(centre + [0, 20.0 * np.sin(state["step"] / 10), 0][-len(centre) :])

        timer = QTimer()
        timer.setInterval(TICK_MS)
        timer.timeout.connect(tick)
        timer.start()
        idle_end = time.perf_counter() + 3
        wait_until(lambda: time.perf_counter() > idle_end)
        idle = frame_statistics(ticks)
        start = time.perf_counter()
        widget = WholeSlideWidget(viewer)  # its worker process starts now: Analyse finds it cold
        viewer.window.add_dock_widget(widget, name="Whole slide")
        dock_open = round(time.perf_counter() - start, 2)
        ticks.clear()
        ends.clear()
        state["last"] = None  # the frame that spans opening the dock is not one of the analysis
        pressed = time.perf_counter()
        cold = time_first_cells(widget, out_dir)
        wait_until(lambda: not widget.runner.busy)
        elapsed = time.perf_counter() - start
        during = frame_statistics(ticks)
        long_frames = [
            {"ended_s": round(end - pressed, 2), "ms": round(1000 * tick, 1)}
            for end, tick in zip(ends, ticks, strict=True)
            if tick > 0.5
        ]
        loads = list(memory.loads)
        result, cells = widget.result, widget.cells.copy()
        warm = time_first_cells(widget, out_dir.with_name("warm"))
        widget.runner.cancel()
        wait_until(lambda: not widget.runner.busy)
        timer.stop()
        widget.worker.close()
        viewer.close()
    return {
        "slide": f"{SIDE} x {SIDE} pyramidal OME-TIFF, {LEVELS} levels, {TILE}-pixel tiles, BCCD mosaic",
        "first_cells_cold_worker": cold,
        "first_cells_warm_worker": warm,
        "dock_open_s": dock_open,
        "whole_run_s": round(elapsed, 1),
        "cells": int(len(cells)),
        "tiles_read": None if result is None else result.summary["tiles_read"],
        "region": None if result is None else result.summary["region"],
        "frame_time_idle": idle,
        "frame_time_during_analysis": during,
        "frames_over_500ms_since_analyse": long_frames,
        "peak_pss_gb_sampled_napari_plus_worker": round(memory.peak_proportional / 2**30, 2),
        "peak_rss_gb_sampled_napari_plus_worker": round(memory.peak / 2**30, 2),
        "peak_rss_gb_sampled_napari": round(memory.peak_self / 2**30, 2),
        "peak_rss_gb_sampled_worker": round(memory.peak_children / 2**30, 2),
        "max_rss_gb_napari": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "max_rss_gb_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "rss_gb_napari_slide_open": round(slide_open_rss / 2**30, 2),
        "torch_in_napari_process": "torch" in sys.modules,
        "load_average_1min_during_run": {
            "mean": round(float(np.mean(loads)), 1),
            "min": round(float(np.min(loads)), 1),
            "max": round(float(np.max(loads)), 1),
            "cores": os.cpu_count(),
        },
        "cells_table": None if result is None else str(result.outputs["cells"]),
    }


WORKER_RUNS = 3
STAGES_SCRIPT = '''
import json, sys, time
started = time.perf_counter()
import napari_hematology.core.whole_slide.worker
from napari_hematology.core.io import read_image
from napari_hematology.core.whole_slide.analysis import WholeSlideConfig, find_reading_area, slide_pixel_size
seconds = {"import_s": time.perf_counter() - started}
started = time.perf_counter()
image = read_image(sys.argv[1])
seconds["open_slide_s"] = time.perf_counter() - started
started = time.perf_counter()
config = WholeSlideConfig()
pixel_size_um = slide_pixel_size(image, config).um_per_px
find_reading_area(image, segmentation=config.segmentation, pixel_size_um=pixel_size_um)
seconds["reading_area_s"] = time.perf_counter() - started
print(json.dumps({name: round(value, 2) for name, value in seconds.items()}))
'''


def measure_cold_worker(slide: Path, out_dir: Path) -> dict:
    """A cold worker process outside napari: when the reading area and the first cells come."""
    import subprocess

    runs = [_cold_worker_run(slide, out_dir) for _ in range(WORKER_RUNS)]
    stages = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, str(slide)], capture_output=True, text=True,
                            check=True)
    return {
        "runs": runs,
        "median": {name: float(np.median([run[name] for run in runs])) for name in runs[0]},
        "first_seconds_in_a_fresh_interpreter": json.loads(stages.stdout),
        "load_average_1min_after": round(os.getloadavg()[0], 1),
    }


def _cold_worker_run(slide: Path, out_dir: Path) -> dict[str, float]:
    """One run in a new worker process, cancelled once its first classified tile arrives."""
    import shutil

    from napari_hematology.core.errors import Cancelled
    from napari_hematology.core.whole_slide.worker import SlideWorker

    shutil.rmtree(out_dir, ignore_errors=True)
    worker, moments = SlideWorker(), Moments()
    with contextlib.suppress(Cancelled):
        worker.run(slide, out_dir, start_near=(SIDE / 2, SIDE / 2), on_regions=moments.mark("reading_area_s"),
                   on_found=moments.mark("first_found_s"), on_tile=moments.mark("first_tile_s"),
                   should_stop=lambda: "first_tile_s" in moments.seconds)
    worker.close()
    return moments.seconds


def geojson_round_trip(cells_csv: Path, out_dir: Path) -> dict:
    """Export the run's cells as QuPath GeoJSON, import them back, compare."""
    import pandas as pd

    from napari_hematology.core.whole_slide.geojson import (
        cells_to_geojson,
        geojson_to_cells,
        read_geojson,
        write_geojson,
    )

    cells = pd.read_csv(cells_csv)
    start = time.perf_counter()
    path = write_geojson(out_dir / "round_trip.geojson", cells_to_geojson(cells))
    back = geojson_to_cells(read_geojson(path))
    seconds = time.perf_counter() - start
    same_classes = bool(len(back) == len(cells) and (back["label"] == cells["label"]).all())
    position = ["centroid_y", "centroid_x"]
    offset = np.abs(back[position].to_numpy() - cells[position].to_numpy())
    return {
        "cells": int(len(cells)),
        "cells_back": int(len(back)),
        "same_classes_in_order": same_classes,
        "max_centroid_difference_px": float(offset.max()) if len(offset) else 0.0,
        "file_mb": round(path.stat().st_size / 2**20, 2),
        "seconds": round(seconds, 2),
    }


def write_reader_svs(path: Path) -> Path:
    """An 8,192 x 8,192 Aperio-style SVS (JPEG tiles, 4x and 16x levels) of the mosaic."""
    fields = bundled_fields()
    description = (
        f"Aperio Image Library v12.0.15\r\n{READER_SIDE}x{READER_SIDE} [0,0 {READER_SIDE}x{READER_SIDE}] "
        "(256x256) JPEG/RGB Q=80|AppMag = 40|MPP = 0.2500"
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        common = {"photometric": "rgb", "metadata": None, "description": description}
        for index, step in enumerate((1, 32, 4, 16)):
            size = READER_SIDE // step
            image = mosaic_tile(fields, np.arange(size) * step, np.arange(size) * step)
            tiled = {} if index == 1 else {"tile": (256, 256), "compression": "jpeg"}
            tif.write(image, **common, **tiled)
    return path


def _timed_region(levels) -> float:
    """Median seconds to read a 2,048 x 2,048 region of full resolution.

    Over the slide's 16 distinct regions, each read once (no reader's cache helps), after a first small
    read (warm-up).
    """
    np.asarray(levels[0][:64, :64])
    seconds = []
    for y in range(0, READER_SIDE, 2048):
        for x in range(0, READER_SIDE, 2048):
            start = time.perf_counter()
            np.asarray(levels[0][y : y + 2048, x : x + 2048])
            seconds.append(time.perf_counter() - start)
    return round(float(np.median(seconds)), 4)


def compare_readers(svs: Path) -> dict:
    """Open time, one-region read time and what each reader gives napari."""
    from napari_hematology.core.io import read_image

    for reader in ("tifffile", "openslide"):  # imports and library loading, not timed
        np.asarray(read_image(svs, reader=reader).levels[-1][:64, :64])
    results = {}
    for reader in ("tifffile", "openslide"):
        start = time.perf_counter()
        image = read_image(svs, reader=reader)
        opened = round(time.perf_counter() - start, 3)
        results[f"napari-hematology ({reader})"] = {
            "open_s": opened,
            "region_2048_s": _timed_region(image.levels),
            "levels": len(image.levels),
            "pixel_size_um": image.pixel_size_um,
            "mrxs_dicom": reader == "openslide",
        }
    results["napari-tiff"] = _napari_tiff(svs)
    results["napari-wsi"] = _napari_wsi(svs)
    results["napari-lazy-openslide"] = _napari_lazy_openslide(svs)
    return results


def _layer_summary(data, kwargs, opened: float) -> dict:
    levels = data if isinstance(data, list) else [data]
    return {
        "open_s": opened,
        "region_2048_s": _timed_region(levels),
        "levels": len(levels),
        "napari_scale": [float(v) for v in kwargs.get("scale", ())] or None,
    }


def _napari_tiff(svs: Path) -> dict:
    try:
        from napari_tiff.napari_tiff_reader import reader_function
    except ImportError as error:
        return {"available": False, "error": str(error)}
    start = time.perf_counter()
    data, kwargs, _ = reader_function(str(svs))[0]
    return {"available": True, **_layer_summary(data, kwargs, round(time.perf_counter() - start, 3))}


def _napari_wsi(svs: Path) -> dict:
    try:
        from napari_wsi.reader import wsi_reader_openslide
    except ImportError as error:
        return {"available": False, "error": str(error)}
    start = time.perf_counter()
    try:
        layers = wsi_reader_openslide(str(svs))
        layers = layers(str(svs)) if callable(layers) else layers
        data, kwargs, _ = layers[0]
    except Exception as error:  # report what the reader does without a napari viewer
        return {"available": True, "error": f"{type(error).__name__}: {error}"}
    return {"available": True, **_layer_summary(data, kwargs, round(time.perf_counter() - start, 3))}


def _napari_lazy_openslide(svs: Path) -> dict:
    try:
        from napari_lazy_openslide import napari_get_reader
    except ImportError as error:
        return {"available": False, "error": f"{type(error).__name__}: {error}"}
    start = time.perf_counter()
    data, kwargs, _ = napari_get_reader(str(svs))(str(svs))[0]
    return {"available": True, **_layer_summary(data, kwargs, round(time.perf_counter() - start, 3))}


def measure_cluster(scratch: Path, slides: int = CLUSTER_SLIDES) -> dict:
    """Seconds for ``slides`` slides on one and on two one-thread local workers, and the speed-up."""
    import pandas as pd
    from dask.distributed import Client, LocalCluster

    from napari_hematology.core.cells.analysis import get_classifier
    from napari_hematology.core.whole_slide.many import analyze_slides

    paths = [write_mosaic_slide(scratch / f"cluster_{index}.ome.tif", CLUSTER_SIDE, 0.1, levels=3)
             for index in range(slides)]
    seconds, tables = {}, {}
    for warm in (False, True):
        for workers in (1, 2):
            out = scratch / f"cluster_out_{workers}_{warm}"
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster:
                if warm:  # a standing cluster: torch imported and the classifier loaded on every worker
                    with Client(cluster.scheduler_address, set_as_default=False) as client:
                        client.run(get_classifier)
                start = time.perf_counter()
                outcomes = analyze_slides(paths, out, scheduler=cluster.scheduler_address)
                seconds[workers, warm] = round(time.perf_counter() - start, 1)
            if any(isinstance(outcome, Exception) for outcome in outcomes):
                raise RuntimeError(f"cluster run failed: {outcomes}")
            tables[workers, warm] = pd.concat(pd.read_csv(path) for path in sorted(out.glob("*_cells.csv")))
    compared = ["centroid_y", "centroid_x", "label"]
    same = all(table[compared].equals(tables[1, False][compared]) for table in tables.values())
    return {"slides": slides, "side": CLUSTER_SIDE, "cells": len(tables[1, False]),
            "seconds_one_worker": seconds[1, False], "seconds_two_workers": seconds[2, False],
            "speed_up": round(seconds[1, False] / seconds[2, False], 2),
            "workers_warm": {"seconds_one_worker": seconds[1, True], "seconds_two_workers": seconds[2, True],
                             "speed_up": round(seconds[1, True] / seconds[2, True], 2),
                             "note": "each worker had imported torch and loaded the classifier before the "
                                     "timed run (a standing cluster)"},
            "same_cells": bool(same),
            "goal": "two one-thread workers >= 1.7x one", "load_average": os.getloadavg()[0],
            "command": "python benchmarks/bench_whole_slide.py --part cluster"}


def measure_lab_day(scratch: Path) -> dict:
    """Slides per hour for a 200-cell differential and for the whole reading area of a 20k x 20k slide."""
    from napari_hematology.core.cells.segmentation import SegmentationConfig
    from napari_hematology.core.whole_slide.analysis import WholeSlideConfig, analyze_slide_file

    slide = write_mosaic_slide(scratch / "lab_day.ome.tif", SIDE, SegmentationConfig().pixel_size_um)
    result = {}
    for name, cells in (("differential_200_cells", 200), ("whole_reading_area", None)):
        start = time.perf_counter()
        config = WholeSlideConfig(max_white_cells=cells)
        run = analyze_slide_file(slide, scratch / f"lab_day_{name}", config=config)
        seconds = time.perf_counter() - start
        result[name] = {"seconds": round(seconds, 1), "slides_per_hour": round(3600 / seconds, 1),
                        "cells": int(run.summary["cells"]), "tiles_read": run.summary["tiles_read"],
                        "tiles_planned": run.summary["tiles_planned"]}
    slide.unlink()
    return {**result, "side": SIDE, "threads": os.cpu_count(), "load_average": os.getloadavg()[0],
            "command": "python benchmarks/bench_whole_slide.py --part lab_day"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "gui", "worker", "readers", "cluster", "lab_day"),
                        default="all")
    args = parser.parse_args()
    from napari_hematology.core.cells.segmentation import SegmentationConfig

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="whole_slide_", dir=os.environ.get("TMPDIR", "/tmp")) as scratch:
        scratch = Path(scratch)
        if args.part in ("all", "gui", "worker"):
            start = time.perf_counter()
            slide = write_mosaic_slide(scratch / "mosaic.ome.tif", SIDE, SegmentationConfig().pixel_size_um)
            build = round(time.perf_counter() - start, 1)
            if args.part in ("all", "worker"):
                results["worker_cold_start"] = {**measure_cold_worker(slide, scratch / "worker"),
                                                "slide_build_s": build}
            if args.part in ("all", "gui"):
                results["gui"] = {**measure_gui(slide, scratch / "out"), "slide_build_s": build}
                table = results["gui"].pop("cells_table")
                results["geojson_round_trip"] = geojson_round_trip(Path(table), scratch) if table else None
            slide.unlink()
        if args.part in ("all", "readers"):
            results["readers"] = compare_readers(write_reader_svs(scratch / "readers.svs"))
        if args.part in ("all", "lab_day"):
            results["lab_day"] = measure_lab_day(scratch)
        if args.part in ("all", "cluster"):
            results["cluster"] = measure_cluster(scratch)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
