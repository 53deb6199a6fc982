"""Progress reporting and cancellation for long core functions, free of any GUI toolkit.

Core functions take ``progress`` (called as ``progress(done, total, message)``) and ``should_stop``
(called with no arguments; returning True cancels). Widgets pass callbacks that feed a thread worker,
the CLI passes a text progress bar.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from napari_hematology.core.errors import Cancelled

T = TypeVar("T")


class ProgressCallback(Protocol):
    """Receives how much of a job is done."""

    def __call__(self, done: int, total: int, message: str = "") -> None:  # noqa: D102
        ...


StopCallback = Callable[[], bool]


def no_progress(done: int, total: int, message: str = "") -> None:
    """Ignore progress reports."""


def never_stop() -> bool:
    """Never ask to stop."""
    return False


def check_cancel(should_stop: StopCallback | None) -> None:
    """Raise :class:`Cancelled` if ``should_stop`` says so.

    Args:
        should_stop: Callback returning True when the user asked to cancel, or None.

    """
    if should_stop is not None and should_stop():
        raise Cancelled("Cancelled by the user.")


def tracked(
    items: Iterable[T],
    total: int,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    message: str = "",
) -> Iterator[T]:
    """Iterate over ``items``, reporting progress and honouring cancellation before each item.

    Args:
        items: What to iterate over.
        total: Number of items, for the progress report.
        progress: Progress callback, or None.
        should_stop: Cancellation callback, or None.
        message: Text shown with the progress.

    Yields:
        The items of ``items``.

    """
    report = progress or no_progress
    report(0, total, message)
    for done, item in enumerate(items, start=1):
        check_cancel(should_stop)
        yield item
        report(done, total, message)


class TextProgress:
    """A one-line text progress bar on stderr, for the command line."""

    def __init__(self, width: int = 30, stream=None) -> None:
        self.width = width
        self.stream = stream or sys.stderr
        self._last = ""

    def __call__(self, done: int, total: int, message: str = "") -> None:
        """Redraw the bar."""
        if not self.stream.isatty():
            return
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {message}"
        if line != self._last:
            self.stream.write(line[:120])
            self.stream.flush()
            self._last = line
        if total and done >= total:
            self.stream.write("\n")
