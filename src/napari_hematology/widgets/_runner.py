"""Run core functions in a background thread with a progress bar, a Cancel button and clear errors.

Every widget of the plugin uses :class:`TaskRunner`, so long work looks and cancels the same everywhere
(Cancel's key, Escape, acts once the dock calls :func:`~napari_hematology.widgets._keys.bind_button_keys`):

    runner = TaskRunner()
    layout.addWidget(runner)
    runner.start(core_function, arg, on_done=self._show_result, keyword=value)

``core_function`` must accept ``progress`` and ``should_stop`` keyword arguments (see
:mod:`napari_hematology.core.progress`); it runs in a napari thread worker. Nothing heavy happens in the GUI
thread: torch is imported by the first task that needs it, in its worker, while the runner shows
"Loading torch…" (a busy bar), so napari never freezes while a dock opens or a model loads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from napari_hematology.core.torch_loading import prepare_torch, torch_ready
from napari_hematology.widgets._keys import CANCEL, shortcut_button

logger = logging.getLogger(__name__)


class _ProgressSignals(QObject):
    progressed = Signal(int, int, str)


def report_error(error: BaseException) -> None:
    """Show an exception to the user as a napari notification, never as a crash.

    Errors meant for users (``HematologyError``) are shown as they are; anything else is shown with its
    type and logged with its traceback.
    """
    from napari.utils.notifications import show_error, show_info

    from napari_hematology.core.errors import Cancelled, HematologyError

    if isinstance(error, Cancelled):
        show_info("Cancelled.")
    elif isinstance(error, HematologyError):
        show_error(str(error))
    else:
        logger.error("Unexpected error", exc_info=error)
        show_error(f"Unexpected error ({type(error).__name__}): {error}")


LOADING_TORCH = "Loading torch…"
PROGRESS_MS = 100  # the bar and its text change at most this often, however often a task reports
MIN_PACE_S = 2.0  # the time left is estimated once a bar has moved for this long


def _with_torch(function: Callable[..., Any], *args: Any, progress, should_stop, **kwargs: Any) -> Any:
    """Prepare torch in the worker thread (showing that it loads), then run ``function``."""
    if not torch_ready():
        progress(0, 0, LOADING_TORCH)
        prepare_torch()
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() - 1))  # a core stays free for napari
    return function(*args, progress=progress, should_stop=should_stop, **kwargs)


class TaskRunner(QWidget):
    """A progress bar with a Cancel button that runs one core function at a time in a thread.

    Args:
        parent: Parent widget.
        uses_torch: The tasks run torch in this process, so each task prepares it first in its worker
            (:func:`prepare_torch`); False for docks whose models run in a worker process.
    """

    def __init__(self, parent: QWidget | None = None, uses_torch: bool = True) -> None:
        super().__init__(parent)
        self.uses_torch = uses_torch
        self._signals = _ProgressSignals()
        self._signals.progressed.connect(self._queue_progress)
        self._latest: tuple[int, int, str] | None = None
        self._stage: tuple[int, float, int] | None = None  # (total, started, done) of the current bar
        self._progress_timer = QTimer(self)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.setInterval(PROGRESS_MS)
        self._progress_timer.timeout.connect(self._show_latest)
        self._stop = threading.Event()
        self.worker = None
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.cancel_button = shortcut_button("Cancel", CANCEL, self.cancel)
        self.cancel_button.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)

    @property
    def busy(self) -> bool:
        """Whether a task is running."""
        return self.worker is not None

    def start(
        self,
        function: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        **kwargs: Any,
    ):
        """Run ``function(*args, progress=..., should_stop=..., **kwargs)`` in a thread worker.

        Args:
            function: Core function taking ``progress`` and ``should_stop`` keyword arguments.
            *args: Positional arguments for it.
            on_done: Called in the GUI thread with the function's result when it succeeds.
            on_error: Called in the GUI thread with the exception (after it is shown) when it fails or is
                cancelled.
            on_finished: Called in the GUI thread after success, error or cancel.
            **kwargs: Keyword arguments for it.

        Returns:
            The started worker, or None if a task is already running.

        """
        from napari.qt.threading import create_worker

        if self.busy:
            from napari.utils.notifications import show_info

            show_info("Still working on the previous task; wait for it or press Cancel.")
            return None
        self._stop.clear()
        kwargs.update(progress=self._signals.progressed.emit, should_stop=self._stop.is_set)
        if self.uses_torch:
            function = partial(_with_torch, function)
        worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        if on_done is not None:
            worker.returned.connect(on_done)
        worker.errored.connect(report_error)
        if on_error is not None:
            worker.errored.connect(on_error)
        worker.finished.connect(self._on_finished)
        if on_finished is not None:
            worker.finished.connect(on_finished)
        self.worker = worker
        self.cancel_button.setEnabled(True)
        self.bar.setRange(0, 0)
        self.status.setText("Working…")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running task to stop at its next check."""
        if self.busy:
            self._stop.set()
            self.status.setText("Cancelling…")

    def _queue_progress(self, done: int, total: int, message: str) -> None:
        """Keep the latest report; show it now if none was shown in the last ``PROGRESS_MS``."""
        self._latest = (done, total, message)
        if not self._progress_timer.isActive():
            self._show_latest()
            self._progress_timer.start()

    def _show_latest(self) -> None:
        if self._latest is not None:
            self._on_progress(*self._latest)
            self._latest = None

    def _on_progress(self, done: int, total: int, message: str) -> None:
        """Show ``done`` of ``total``; a total of 0 means "busy, amount unknown" (e.g. loading a model)."""
        if total <= 0:
            self.bar.setRange(0, 0)
            self.status.setText(message or "Working…")
            self._stage = None
            return
        self.bar.setRange(0, total)
        self.bar.setValue(min(done, total))
        self.status.setText(f"{message} {done}/{total}{self._time_left(done, total)}".strip())

    def _time_left(self, done: int, total: int) -> str:
        """``, about 3 min left`` from the pace so far on this bar (empty until there is a pace)."""
        now = time.monotonic()
        if self._stage is None or self._stage[0] != total or done < self._stage[2]:
            self._stage = (total, now, done)  # a new bar: its pace starts now
            return ""
        _, started, first = self._stage
        if done <= first or now - started < MIN_PACE_S:
            return ""
        left = (now - started) / (done - first) * (total - done)
        return f", about {_duration(left)} left"

    def _on_finished(self) -> None:
        self._progress_timer.stop()
        self._latest = None
        self._stage = None
        self.worker = None
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(0 if self._stop.is_set() else 1)
        self.status.setText("Cancelled." if self._stop.is_set() else "Done.")


def _duration(seconds: float) -> str:
    """``40 s``, ``3 min`` or ``1 h 20 min``."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
