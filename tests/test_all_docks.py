"""All five docks open at once, keys that never collide, a window that fits the screen."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import QAbstractButton

from napari_hematology.widgets._keys import CANCEL, KEY_PROPERTY, RUN, key_text

pytestmark = pytest.mark.gui

DOCKS = ("Blast detection", "Slide prediction", "Review labels", "Expression", "Cytometry", "Whole slide")
SCREEN = (1280, 800)


@pytest.fixture
def docks(make_napari_viewer, qtbot):
    """The viewer's window at 1280x800, shown, with every dock of the plugin open: {name: widget}."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    widgets = {
        name: viewer.window.add_plugin_dock_widget("napari-hematology", name)[1] for name in DOCKS
    }
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=5000)
    qtbot.wait(50)
    return widgets


def _portable(key) -> str:
    return QKeySequence(key).toString(QKeySequence.SequenceFormat.PortableText)


def napari_keys() -> tuple[set[str], set[str]]:
    """napari's default keys: (window-wide menu keys, keys of the canvas keymap)."""
    from napari._app_model import get_app_model
    from napari.utils.action_manager import action_manager

    window_wide = {_portable(str(rule.keybinding)) for rule in get_app_model().keybindings}
    canvas = {_portable(str(key)) for keys in action_manager._shortcuts.values() for key in keys}
    return window_wide, canvas


def test_keys_are_scoped_to_their_dock_and_never_napari_defaults(docks):
    window_wide, canvas = napari_keys()
    ours = [shortcut for dock in docks.values() for shortcut in dock.findChildren(QShortcut)]
    assert ours, "the docks bind their keys"
    for shortcut in ours:
        key = _portable(shortcut.key())
        assert shortcut.context() == Qt.ShortcutContext.WidgetWithChildrenShortcut, key
        assert key not in window_wide, f"{key} is napari's own key"
        # Escape is napari's canvas key for leaving a mode; in a dock it cancels that dock's task
        assert key not in canvas or key == _portable(CANCEL), f"{key} is one of napari's canvas keys"
    for first in ours:
        for second in ours:
            if first is not second and _portable(first.key()) == _portable(second.key()):
                scope, other = first.parent(), second.parent()
                assert not (scope.isAncestorOf(other) or other.isAncestorOf(scope) or scope is other)
    for dock in docks.values():
        for button in dock.findChildren(QAbstractButton):
            assert button.shortcut().isEmpty(), f"{button.text()} has a window-wide shortcut"
            key = button.property(KEY_PROPERTY)
            if key:
                assert key_text(key) in button.text() and key_text(key) in button.toolTip()


def test_a_key_acts_in_the_dock_that_has_focus(docks, qtbot):
    assert _portable(RUN) == "Ctrl+Return"
    blast, slide = docks["Blast detection"], docks["Slide prediction"]
    pressed = []
    blast.run_button.clicked.connect(lambda: pressed.append("blast"))
    slide.predict_button.clicked.connect(lambda: pressed.append("slide"))
    for name, dock in (("blast", blast), ("slide", slide)):
        focus = dock.findChildren(QAbstractButton)[0]
        focus.setFocus()
        qtbot.waitUntil(focus.hasFocus, timeout=2000)
        qtbot.keyClick(focus, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        assert pressed[-1:] == [name]
    assert pressed == ["blast", "slide"]


def test_five_docks_fit_a_1280x800_window(docks, qtbot):
    window = next(iter(docks.values())).window()
    qtbot.wait(100)
    too_tall = {name: dock.minimumSizeHint().height() for name, dock in docks.items()
                if dock.minimumSizeHint().height() > SCREEN[1] // len(DOCKS)}
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1], f"docks too tall: {too_tall}"
