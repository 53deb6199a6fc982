"""Every dock open at once: one tabbed workspace that fits a 1280x800 window, keys that never collide."""

from __future__ import annotations

import pytest
from app_model.backends.qt import qkeysequence2modelkeybinding
from napari.utils.interactions import Shortcut
from napari.utils.key_bindings import coerce_keybinding
from qtpy.QtCore import Qt
from qtpy.QtGui import QAction, QKeySequence, QShortcut
from qtpy.QtWidgets import QAbstractButton

from napari_hematology.widgets._keys import (
    CANCEL,
    KEY_PROPERTY,
    OPEN,
    PLUGIN,
    RUN,
    SAVE,
    TRAIN,
    _qt_sequences,
    key_text,
)

pytestmark = pytest.mark.gui

DOCKS = (
    "Blast detection", "Slide prediction", "Review labels", "Gallery", "Expression", "Cytometry",
    "Whole slide",
)
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
    """napari's default keys: (window-wide menu keys, keys of the canvas keymap), ours left out."""
    from napari._app_model import get_app_model
    from napari.utils.action_manager import action_manager

    window_wide = {
        _portable(seq) for rule in get_app_model().keybindings for seq in _qt_sequences(rule.keybinding)
    }
    canvas = {
        _portable(seq)
        for name, keys in action_manager._shortcuts.items() if not name.startswith(f"{PLUGIN}:")
        for key in keys for seq in _qt_sequences(coerce_keybinding(key))
    }
    return window_wide, canvas


def dock_keys(docks) -> list[tuple[QAction, str]]:
    """Every (key action, portable key) of the docks."""
    return [
        (action, _portable(sequence))
        for dock in docks.values() for action in dock.actions()
        if action.objectName().startswith(f"{PLUGIN}:")
        for sequence in action.shortcuts()
    ]


def test_keys_are_scoped_to_their_dock_and_never_napari_defaults(docks):
    window_wide, canvas = napari_keys()
    ours = dock_keys(docks)
    assert ours, "the docks bind their keys"
    for action, key in ours:
        assert action.shortcutContext() == Qt.ShortcutContext.WidgetWithChildrenShortcut, key
        assert key not in window_wide, f"{key} is napari's own key"
        # Escape is napari's canvas key for leaving a mode; in a dock it cancels that dock's task
        assert key not in canvas or key == _portable(CANCEL), f"{key} is one of napari's canvas keys"
    for first, first_key in ours:
        for second, second_key in ours:
            if first is not second and first_key == second_key:
                scope, other = first.parent(), second.parent()
                assert not (scope.isAncestorOf(other) or other.isAncestorOf(scope) or scope is other)
    for dock in docks.values():
        assert not dock.findChildren(QShortcut), "keys are the dock's actions, listed in napari's preferences"
        for button in dock.findChildren(QAbstractButton):
            assert button.shortcut().isEmpty(), f"{button.text()} has a window-wide shortcut"
            key = button.property(KEY_PROPERTY)
            if key:
                assert key_text(key) in button.text() and key_text(key) in button.toolTip()


@pytest.fixture
def shortcut_page(docks, qtbot):
    """napari's Preferences > Shortcuts page, on its viewer group: {action description: (row, key text)}."""
    from napari._qt.widgets.qt_keyboard_settings import ShortcutEditor

    page = ShortcutEditor()
    qtbot.addWidget(page)
    table = page._table
    assert page.layer_combo_box.currentText() == page.VIEWER_KEYBINDINGS
    return page, {
        table.item(row, page._action_name_col).text(): (row, table.item(row, page._shortcut_col).text())
        for row in range(table.rowCount())
    }


def test_napari_shortcut_preferences_list_each_docks_keys(shortcut_page):
    _, rows = shortcut_page
    expected = {
        "napari-hematology: Blast detection: Run": RUN,
        "napari-hematology: Blast detection: Cancel": CANCEL,
        "napari-hematology: Slide prediction: Predict": RUN,
        "napari-hematology: Slide prediction: Train": TRAIN,
        "napari-hematology: Cytometry: Add FCS files": OPEN,
        "napari-hematology: Cytometry: Save results": SAVE,
        "napari-hematology: Review labels: Open project": OPEN,
    }
    for description, key in expected.items():
        assert description in rows, f"{description} missing from {sorted(rows)}"
        assert rows[description][1] == Shortcut(qkeysequence2modelkeybinding(QKeySequence(key))).platform


def test_a_key_changed_in_preferences_moves_in_its_dock_only(shortcut_page, docks, qtbot):
    from napari.utils.action_manager import action_manager

    page, rows = shortcut_page
    new_key = "Ctrl+Alt+J"
    assert new_key not in {key for _, key in dock_keys(docks)} | set().union(*napari_keys())
    row, _ = rows["napari-hematology: Blast detection: Run"]
    name = page._table.item(row, page._action_col).text()
    blast, slide = docks["Blast detection"], docks["Slide prediction"]
    try:
        page._table.item(row, page._shortcut_col).setText(
            Shortcut(qkeysequence2modelkeybinding(QKeySequence(new_key))).platform
        )
        assert key_text(new_key) in blast.run_button.text() and key_text(RUN) not in blast.run_button.text()
        assert key_text(RUN) in slide.predict_button.text()
        pressed = []
        blast.run_button.clicked.connect(lambda: pressed.append("blast"))
        blast.run_button.setFocus()
        qtbot.waitUntil(blast.run_button.hasFocus, timeout=2000)
        modifiers = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier
        qtbot.keyClick(blast.run_button, Qt.Key.Key_J, modifiers)
        assert pressed == ["blast"]
    finally:
        action_manager.unbind_shortcut(name)
        action_manager.bind_shortcut(name, qkeysequence2modelkeybinding(QKeySequence(RUN)))
    assert key_text(RUN) in blast.run_button.text()


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
    from napari.utils.action_manager import action_manager

    action_manager.trigger(f"{PLUGIN}:slide_prediction.predict")
    assert pressed == ["blast", "slide", "slide"], "napari's action presses the button in the focused dock"


def test_docks_open_as_tabs_of_one_workspace_that_fits_1280x800(docks, qtbot):
    from qtpy.QtWidgets import QScrollArea

    from napari_hematology.widgets._workspace import workspace_docks

    window = next(iter(docks.values())).window()
    frames = workspace_docks(window)
    assert len(frames) == len(DOCKS)
    for frame in frames:
        assert set(window.tabifiedDockWidgets(frame)) == set(frames) - {frame}, "one tab group"
    assert frames[-1].widget() is docks[DOCKS[-1]] and not frames[-1].visibleRegion().isEmpty(), (
        "the dock opened last is the tab shown"
    )
    canvas = window.centralWidget()  # napari's canvas with its sliders
    for name, dock in docks.items():
        dock.parentWidget().raise_()
        qtbot.wait(30)
        area = dock.findChild(QScrollArea)
        assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1]
        assert area.horizontalScrollBar().maximum() == 0, f"{name} scrolls sideways"
        assert dock.height() >= SCREEN[1] * 0.8, f"{name} gets {dock.height()} px of height"
        assert canvas.width() >= window.width() / 2, f"with {name} shown the canvas is {canvas.width()} px"
        assert canvas.isVisible() and canvas.height() >= window.height() / 2


def test_a_dock_reopened_joins_the_workspace_again(docks, qtbot):
    from napari_hematology.widgets._workspace import workspace_docks

    viewer = docks["Gallery"].viewer
    window = docks["Gallery"].window()
    viewer.window.remove_dock_widget(docks["Gallery"].parentWidget())
    qtbot.wait(20)
    frame, _ = viewer.window.add_plugin_dock_widget("napari-hematology", "Gallery")
    assert set(window.tabifiedDockWidgets(frame)) == set(workspace_docks(window)) - {frame}
