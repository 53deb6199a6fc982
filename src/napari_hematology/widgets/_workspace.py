"""One workspace: the plugin's docks open as tabs of one group beside the canvas, not stacked.

napari stacks every new dock under the ones already in its area, so seven open docks get about 90 pixels of
height each. A dock of this plugin calls :func:`join_workspace` when it is built (``scrolling_layout`` does
it): when napari (or a script) puts it into the main window, it becomes a tab of the plugin's docks already
there, in the same area, and is brought to the front. Each tab has the whole height of the area; every page
is laid out to fit the area's default width (:data:`PAGE_WIDTH`), so a 1280x800 window keeps at least half
of its width for the canvas and no page scrolls sideways. Docks of other plugins are left where napari
puts them, and a dock the user drags elsewhere stays there.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

WORKSPACE_PROPERTY = "hematology_workspace"
# the width a page's content may ask for: a right-hand dock at napari's default width (327 px at 1280x800)
# less its vertical scroll bar and margins
PAGE_WIDTH = 300


def join_workspace(dock: QWidget) -> None:
    """Make ``dock`` a tab of the plugin's other docks once it is placed in napari's main window."""
    dock.setProperty(WORKSPACE_PROPERTY, True)
    dock.installEventFilter(_Joiner(dock))


def workspace_docks(window: QMainWindow) -> list[QDockWidget]:
    """The dock frames of the plugin's docks in ``window``, in the order they were added."""
    return [frame for frame in window.findChildren(QDockWidget) if _is_ours(frame)]


def _is_ours(frame: QDockWidget) -> bool:
    inner = frame.widget()
    return inner is not None and bool(inner.property(WORKSPACE_PROPERTY))


class _Joiner(QObject):
    """Watches a dock until its frame is placed in a main window, then tabifies the frame once."""

    def __init__(self, dock: QWidget) -> None:
        super().__init__(dock)
        self.dock = dock
        self.frame: QDockWidget | None = None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        """On a new parent, follow the dock frame that now holds the dock."""
        if watched is self.dock and event.type() == QEvent.Type.ParentChange:
            frame = self.dock.parentWidget()
            if isinstance(frame, QDockWidget) and frame is not self.frame:
                self.frame = frame
                # emitted by QMainWindow.addDockWidget once the frame is in its layout
                frame.dockLocationChanged.connect(self._placed)
        return False

    def _placed(self, area) -> None:
        frame = self.frame
        if frame is None:
            return
        frame.dockLocationChanged.disconnect(self._placed)  # once: later moves are the user's
        window = frame.parentWidget()
        if not isinstance(window, QMainWindow) or frame.isFloating():
            return
        group = [
            other for other in workspace_docks(window)
            if other is not frame and not other.isHidden() and not other.isFloating()
            and window.dockWidgetArea(other) == area
        ]
        if group:
            frame.blockSignals(True)  # napari would save its settings again for the same area
            try:
                window.tabifyDockWidget(group[0], frame)
            finally:
                frame.blockSignals(False)
        frame.show()
        frame.raise_()  # the new page is the tab shown
        # the group is as wide as its widest page asks (its content and a scroll bar), no wider
        window.resizeDocks([frame], [max(page.sizeHint().width() for page in [*group, frame])],
                           Qt.Orientation.Horizontal)
