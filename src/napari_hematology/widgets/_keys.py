"""Keyboard shortcuts of the docks: each acts only in the dock that has focus, and none is one of napari's.

A button's own shortcut (``QAbstractButton.setShortcut``) covers the whole main window, so the same key in
two docks, or a key napari already uses (Ctrl+O Open, Ctrl+S Save), becomes ambiguous and fires nothing.
Instead a dock makes its buttons with :func:`shortcut_button` and, once built, calls
:func:`bind_button_keys`: every key then becomes a ``QAction`` of that dock in the
``WidgetWithChildrenShortcut`` context. Docks may share a key (Ctrl+Return runs the dock being worked in).

napari applies no keybinding contribution of a plugin manifest, and its Preferences > Shortcuts page lists
the actions of its ``action_manager`` that have a keymap provider. So each button is also registered there,
as "napari-hematology: <dock>: <button>", with :class:`_DockKeymap` as its provider: no instance of it ever
receives key events, so napari shows and stores the key but never fires it. The dock follows any change
made there (``action_manager.events.shortcut_changed``), on its actions, button text and tooltip.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

from app_model.backends.qt import QKeyBindingSequence, qkeysequence2modelkeybinding
from app_model.types import KeyBinding
from napari.settings import get_settings
from napari.utils.action_manager import action_manager
from napari.utils.key_bindings import KeymapProvider, coerce_keybinding
from npe2 import PluginManifest
from qtpy.QtCore import Qt
from qtpy.QtGui import QAction, QKeySequence
from qtpy.QtWidgets import QAbstractButton, QApplication, QPushButton, QWidget

RUN = "Ctrl+Return"
TRAIN = "Ctrl+Shift+Return"
OPEN = "Ctrl+L"
SAVE = "Ctrl+Shift+S"
APPLY_MODEL = "Ctrl+Shift+M"
CANCEL = "Escape"

PLUGIN = "napari-hematology"
KEY_PROPERTY = "hematology_key"
TEXT_PROPERTY = "hematology_text"


class _DockKeymap(KeymapProvider):
    """Keymap provider of the dock actions in napari's action manager; never instantiated, so never fired."""


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
    button = QPushButton(text)
    if key:
        button.setProperty(TEXT_PROPERTY, text)
        button.setProperty(KEY_PROPERTY, key)
        _label(button, [QKeySequence(key)])
    button.clicked.connect(slot)
    return button


def bind_button_keys(dock: QWidget) -> list[QAction]:
    """Bind the key of every :func:`shortcut_button` inside ``dock``, acting only while focus is in it.

    Each key is registered in napari's Preferences > Shortcuts, whose changes the dock then follows.
    A key presses its button, so a disabled button ignores it too.

    Returns:
        The dock's key actions, one per keyed button.

    """
    title = _dock_titles().get(f"{type(dock).__module__}:{type(dock).__qualname__}", type(dock).__name__)
    actions = []
    for button in dock.findChildren(QAbstractButton):
        key, text = button.property(KEY_PROPERTY), button.property(TEXT_PROPERTY)
        if not key:
            continue
        action = QAction(_description(title, text), dock)
        action.setObjectName(_register(title, text, key))
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.triggered.connect(button.click)
        dock.addAction(action)
        _follow_preferences(action, button)
        actions.append(action)
    return actions


def _action_name(dock_title: str, text: str) -> str:
    """The action's name in napari's action manager and settings: ``napari-hematology:dock.button``."""
    return f"{PLUGIN}:{_slug(dock_title)}.{_slug(text)}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _description(dock_title: str, text: str) -> str:
    return f"{PLUGIN}: {dock_title}: {text.rstrip('…')}"


@cache
def _dock_titles() -> dict[str, str]:
    """Each dock class's ``module:Class`` name mapped to its title in the plugin manifest.

    The manifest napari already loaded is used (parsing the file again takes a tenth of a second while the
    first dock opens); the file only when the plugin is not registered (a dock built outside napari).
    """
    from npe2 import PluginManager

    try:
        manifest = PluginManager.instance().get_manifest(PLUGIN)
    except KeyError:
        manifest = PluginManifest.from_file(files("napari_hematology") / "napari.yaml")
    python_names = {command.id: command.python_name for command in manifest.contributions.commands}
    return {python_names[widget.command]: widget.display_name for widget in manifest.contributions.widgets}


def _register(dock_title: str, text: str, key: str) -> str:
    """Register the button's action with napari, with the key the user chose (kept in napari's settings)."""
    name = _action_name(dock_title, text)
    if name not in action_manager._actions:
        action_manager.register_action(
            name, lambda: _press_in_focused_dock(name), _description(dock_title, text), _DockKeymap
        )
        default = [qkeysequence2modelkeybinding(QKeySequence(key))]
        for binding in get_settings().shortcuts.shortcuts.get(name, default):
            action_manager.bind_shortcut(name, binding)
    return name


def _press_in_focused_dock(name: str) -> None:
    """What the action does when napari triggers it: the same as its key in the dock that has focus."""
    widget = QApplication.focusWidget()
    while widget is not None:
        for action in widget.actions():
            if action.objectName() == name:
                action.trigger()
                return
        widget = widget.parentWidget()


def _follow_preferences(action: QAction, button: QAbstractButton) -> None:
    """Give the action and button the keys napari holds for the action, now and after each change."""

    def apply(_event: Any = None) -> None:
        sequences = [
            sequence
            for binding in action_manager._shortcuts.get(action.objectName(), [])
            for sequence in _qt_sequences(coerce_keybinding(binding))
        ]
        action.setShortcuts(sequences)
        _label(button, sequences)

    def on_change(event: Any) -> None:
        if event.name == action.objectName():
            apply()

    apply()
    action_manager.events.shortcut_changed.connect(on_change, until=button.destroyed)


def _qt_sequences(binding: KeyBinding) -> list[QKeySequence]:
    """Qt's key sequences for a napari key binding; app-model's Enter is both Return and keypad Enter."""
    sequence = QKeyBindingSequence(binding)
    text = sequence.toString(QKeySequence.SequenceFormat.PortableText)
    if text.endswith("Enter"):
        return [QKeySequence(text.removesuffix("Enter") + "Return"), sequence]
    return [sequence]


def _label(button: QAbstractButton, sequences: list[QKeySequence]) -> None:
    """Show the first key on the button and every key in its tooltip."""
    text = button.property(TEXT_PROPERTY)
    if not sequences:
        button.setText(text)
        button.setToolTip(f"{text} (no key: set one in Preferences > Shortcuts)")
        return
    native = [sequence.toString(QKeySequence.SequenceFormat.NativeText) for sequence in sequences]
    button.setText(f"{text} ({native[0]})")
    button.setToolTip(
        f"{text}: {' or '.join(native)} while this panel has focus (change it in Preferences > Shortcuts)"
    )
