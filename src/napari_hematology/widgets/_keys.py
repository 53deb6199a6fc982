"""Keyboard shortcuts of the docks: each acts only in the dock that has focus, and none is one of napari's.

A button's own shortcut (``QAbstractButton.setShortcut``) covers the whole main window, so the same key in
two docks, or a key napari already uses (Ctrl+O Open, Ctrl+S Save), becomes ambiguous and fires nothing.
Instead a dock makes its buttons with :func:`shortcut_button` and, once built, calls
:func:`bind_button_keys`: every key then becomes a ``QShortcut`` in the ``WidgetWithChildrenShortcut``
context of that dock. Docks may share a key (Ctrl+Return runs the dock being worked in). napari's plugin
manifest has no keybinding contribution that napari applies, so the keys are shown on the buttons and in
their tooltips rather than in napari's keybinding preferences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import QAbstractButton, QPushButton, QWidget

RUN = "Ctrl+Return"
TRAIN = "Ctrl+Shift+Return"
OPEN = "Ctrl+L"
SAVE = "Ctrl+Shift+S"
APPLY_MODEL = "Ctrl+Shift+M"
CANCEL = "Escape"

KEY_PROPERTY = "hematology_key"


def key_text(key: str) -> str:
    """The key as the platform writes it (``Ctrl+Return``, or ``⌘↩`` on macOS)."""
    return QKeySequence(key).toString(QKeySequence.SequenceFormat.NativeText)


def shortcut_button(text: str, key: str | None, slot: Callable[[], Any]) -> QPushButton:
    """Make a push button that calls ``slot``; its key (shown on it) acts once the dock binds it.

    Args:
        text: What the button does, without the key.
        key: Portable key sequence (one of this module's constants), or None for no key.
        slot: Called on click or key.

    Returns:
        The button; call :func:`bind_button_keys` on the dock that holds it.

    """
    button = QPushButton(f"{text} ({key_text(key)})" if key else text)
    if key:
        button.setProperty(KEY_PROPERTY, key)
        button.setToolTip(f"{text}: {key_text(key)} while this panel has focus")
    button.clicked.connect(slot)
    return button


def bind_button_keys(dock: QWidget) -> list[QShortcut]:
    """Bind the key of every :func:`shortcut_button` inside ``dock``, acting only while focus is in it.

    A key presses its button, so a disabled button ignores it too.

    Returns:
        The shortcuts made, one per keyed button.

    """
    shortcuts = []
    for button in dock.findChildren(QAbstractButton):
        key = button.property(KEY_PROPERTY)
        if not key:
            continue
        shortcut = QShortcut(QKeySequence(key), dock)
        shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        shortcut.activated.connect(button.click)
        shortcuts.append(shortcut)
    return shortcuts
