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
    """A terminal progress bar (tqdm) on stderr, for the command line; silent when stderr is no terminal.

    One bar per phase: a new total or message, or a count that goes back, closes the bar and starts the
    next one; reaching the total closes it.
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._bar = None
        self._phase: tuple[int, str] | None = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        """Move the bar to ``done`` of ``total``."""
        if not self.stream.isatty():
            return
        from tqdm import tqdm

        if self._bar is None or self._phase != (total, message) or done < self._bar.n:
            self.close()
            self._bar = tqdm(total=total or None, desc=message or None, file=self.stream, dynamic_ncols=True)
            self._phase = (total, message)
        self._bar.update(done - self._bar.n)
        if total and done >= total:
            self.close()

    def close(self) -> None:
        """Finish the current bar (it stays on screen)."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._phase = None, None
