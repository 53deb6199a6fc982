"""The whole-slide analysis in a process of its own, so that it cannot freeze napari's drawing.

Segmentation and morphology hold the GIL for long stretches; in a thread of napari's process they would
stall the viewer. :class:`SlideWorker` is started for the first run (the Whole slide dock starts it when
Analyse is pressed) and kept for the next ones; it loads the classifier, runs
:func:`~napari_hematology.core.whole_slide.analysis.analyze_slide_file` and relays its regions, tiles and
progress to the calling thread.

The process is spawned, and spawned processes normally re-run the caller's main script; a script that
opens napari without an ``if __name__ == "__main__":`` guard would then open napari again in the worker,
which fails. The worker needs nothing from that script, so it is started without it, from any script.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_hematology.core.cells.analysis import LazyClassifier, get_classifier
from napari_hematology.core.errors import HematologyError
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.torch_loading import load_torch_libraries_unlocked
from napari_hematology.core.whole_slide.analysis import SlideAnalysis, TileUpdate, analyze_slide_file

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

POLL_S = 0.1
CLOSE_WAIT_S = 10.0


class SlideWorker:
    """A process of its own that runs :func:`analyze_slide_file`, kept for the next run.

    Segmentation and morphology hold the GIL for long stretches; in their own process they cannot freeze
    the caller's thread (napari's drawing). A run's classifier loads once its first tile's cells are found
    (and sent as found) and stays loaded for the next run. :meth:`run` hands the process a job and relays
    its regions, cells and progress to the calling thread.
    """

    def __init__(self, classifier=None) -> None:
        """Prepare the worker; nothing starts until :meth:`start` or :meth:`run`.

        Args:
            classifier: A picklable loaded classifier to use for every run; None loads the run's
                ``model_dir`` (the shipped one by default) after its first tile's segmentation.

        """
        self._classifier = classifier
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._running = False

    @property
    def pid(self) -> int | None:
        """The process id while it runs (to measure its memory, for example)."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def start(self) -> None:
        """Start the process unless it is running (again after :meth:`close` or a crash)."""
        if self.pid is not None:
            return
        context = self._context
        self._jobs, self._messages, self._stop = context.Queue(), context.Queue(), context.Event()
        self._process = context.Process(
            target=_serve,
            args=(self._jobs, self._messages, self._stop, self._classifier),
            name="napari-hematology whole slide",
            daemon=True,
        )
        with _main_script_hidden():
            self._process.start()

    def run(
        self,
        path: str | Path,
        out_dir: str | Path,
        *,
        on_regions: Callable[[list[np.ndarray]], None] | None = None,
        on_found: Callable[[pd.DataFrame], None] | None = None,
        on_tile: Callable[[TileUpdate], None] | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
        **options: Any,
    ) -> SlideAnalysis:
        """Analyse a slide in the process; callbacks are called in the calling thread.

        Args:
            path: Slide file.
            out_dir: Output folder.
            on_regions: Called with the polygons read in.
            on_found: Called with cells found while the classifier still loads (not classified yet).
            on_tile: Called after each tile.
            progress: Progress callback.
            should_stop: Cancellation callback, polled every ``POLL_S`` seconds; the run stops after its
                current tile.
            **options: Other keyword arguments of :func:`analyze_slide_file` (picklable).

        Returns:
            The run's cells, summary and outputs.

        Raises:
            HematologyError: The run failed (``Cancelled`` when it was cancelled), or the process died.

        """
        self.start()
        self._stop.clear()
        self._jobs.put((path, out_dir, options))
        self._running = True
        try:
            callbacks = {"regions": on_regions, "found": on_found, "tile": on_tile, "progress": progress}
            return self._relay(callbacks, should_stop)
        finally:
            self._running = False

    def _relay(
        self, callbacks: dict[str, Callable | None], should_stop: StopCallback | None
    ) -> SlideAnalysis:
        """Pass the process's messages to the callbacks until its result or error comes."""
        while True:
            if should_stop is not None and should_stop():
                self._stop.set()
            try:
                kind, payload = self._messages.get(timeout=POLL_S)
            except queue.Empty:
                if self.pid is None:
                    raise HematologyError(self._death_message()) from None
                continue
            if kind == "done":
                return payload
            if kind == "error":
                raise payload
            if callbacks[kind] is not None:
                callbacks[kind](*payload)

    def _death_message(self) -> str:
        """What to tell the user when the process is gone without a result."""
        code = None if self._process is None else self._process.exitcode
        if code is not None and code < 0:
            name = _signal_name(-code)
            why = (
                f"it was killed by the system ({name}), most likely because the computer ran out of memory"
                if -code == signal.SIGKILL else f"it was ended by signal {name}"
            )
        elif code:
            why = f"it exited with code {code} (see napari's log for its error)"
        else:
            why = "it was closed"
        return (
            f"The whole-slide process stopped before finishing: {why}. The cells found so far are kept: "
            "press Resume to continue."
        )

    def close(self) -> None:
        """Stop the process; a running analysis first stops after its current tile, keeping its checkpoint."""
        if self._process is None:
            return
        if self._running:
            self._stop.set()
            self._jobs.put(None)
            self._process.join(CLOSE_WAIT_S)
        if self._process.is_alive():
            self._process.terminate()  # idle or warming up: nothing to lose
        self._process.join()
        self._process = None


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start a spawned process without re-running the caller's main script in it.

    ``multiprocessing`` re-imports ``__main__`` in the new process from its ``__spec__`` or ``__file__``;
    with both hidden for the moment the process starts, it does not, and the worker (whose code lives in
    this package) needs nothing from it.
    """
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        if "__spec__" in saved:
            main.__spec__ = None
        if "__file__" in saved:
            del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _serve(jobs, messages, stop, classifier) -> None:
    """The worker process: run jobs ``(path, out_dir, options)`` until ``None`` comes.

    The first job finds its reading area and its first tile's cells (sent as found) before the classifier
    loads; later jobs find it loaded.
    """
    while (job := jobs.get()) is not None:
        path, out_dir, options = job
        relay = {
            "regions": partial(_send, messages, "regions"),
            "found": partial(_send, messages, "found"),
            "tile": partial(_send_and_trim, messages, "tile"),
            "progress": partial(_send, messages, "progress"),
        }
        try:
            result = analyze_slide_file(
                path,
                out_dir,
                classifier=_classifier_for(classifier, options),
                on_regions=relay["regions"],
                on_found=relay["found"],
                on_tile=relay["tile"],
                progress=relay["progress"],
                should_stop=stop.is_set,
                **options,
            )
        except Exception as error:  # every failure goes back to the caller, who raises it
            if not isinstance(error, HematologyError):
                logger.exception("Whole-slide analysis failed")
            messages.put(("error", _picklable(error)))
        else:
            messages.put(("done", result))


def _classifier_for(classifier, options: dict[str, Any]):
    """The worker's own classifier if it was given one, else the run's (``model_dir``).

    The first run loads it once its first cells are found (torch takes seconds to import); later runs load
    it at once (cached, reloaded if its weights changed).
    """
    if classifier is not None:
        return classifier
    load = partial(_load, options.pop("model_dir", None))
    return load() if "torch" in sys.modules else LazyClassifier(load)


def _load(model_dir: str | Path | None):
    """Import torch (its libraries outside Python's lock) and load the run's classifier."""
    load_torch_libraries_unlocked()
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # a core stays free for the viewer
    return get_classifier(model_dir)


def _send(messages, kind: str, *payload) -> None:
    messages.put((kind, payload))


def _send_and_trim(messages, kind: str, *payload) -> None:
    """Send, then hand the heap the tile freed back to the system (its RSS stays ~70 MB lower)."""
    _send(messages, kind, *payload)
    release_freed_memory()


def release_freed_memory() -> bool:
    """Return freed heap pages to the system with glibc's ``malloc_trim``; False where there is none."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def _picklable(error: Exception) -> Exception:
    """The error itself if it can travel between processes, else a plain one with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # any exception type may fail to unpickle
        return HematologyError(f"{type(error).__name__}: {error}")
    return error
