"""Run core functions in a background thread with a progress bar, a Cancel button and clear errors.

Every widget of the plugin uses :class:`TaskRunner`, so long work looks and cancels the same everywhere
(Cancel's key, Escape, acts once the dock calls :func:`~napari_hematology.widgets._keys.bind_button_keys`):

    runner = TaskRunner()
    layout.addWidget(runner)
    runner.start(core_function, arg, on_done=self._show_result, keyword=value)

``core_function`` must accept ``progress`` and ``should_stop`` keyword arguments (see
:mod:`napari_hematology.core.progress`); it runs in a napari thread worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

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


def prepare_torch() -> None:
    """Import torch's optimiser stack safely in the GUI thread; call before any torch work in a widget.

    Loading triton's LLVM after napari's OpenGL context exists segfaults under Mesa (software GL, Xvfb):
    the first optimiser step imports ``torch._dynamo``, which imports triton. Triton only serves GPUs, so on
    machines without CUDA it is kept out of the process.
    """
    import sys

    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        sys.modules["triton"] = None  # "import triton" then raises ImportError, and torch skips it
    import torch._dynamo  # noqa: F401


class TaskRunner(QWidget):
    """A progress bar with a Cancel button that runs one core function at a time in a thread.

    Args:
        parent: Parent widget.
        uses_torch: The tasks run torch in this process, so torch is prepared now (see
            :func:`prepare_torch`); False for docks whose models run in a worker process.
    """

    def __init__(self, parent: QWidget | None = None, uses_torch: bool = True) -> None:
        super().__init__(parent)
        if uses_torch:
            prepare_torch()
        self._signals = _ProgressSignals()
        self._signals.progressed.connect(self._on_progress)
        self._stop = threading.Event()
        self.worker = None
        self.status = QLabel("")
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

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        self.status.setText(f"{message} {done}/{total}".strip())

    def _on_finished(self) -> None:
        self.worker = None
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(0 if self._stop.is_set() else 1)
        self.status.setText("Cancelled." if self._stop.is_set() else "Done.")
