"""Layout helpers shared by the docks.

A scrolling body, so docks never grow the main window, combo boxes wide enough for the names they hold, and
small constructors of form fields and read-only table cells.
"""

from __future__ import annotations

from collections.abc import Iterable

from magicgui.widgets import FileEdit
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QScrollArea,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


def scrolling_layout(dock: QWidget) -> QVBoxLayout:
    """Give ``dock`` a scroll area and return the layout to fill inside it.

    napari stacks docks in the window's side area; a dock asks for no more than a scroll bar, so five open
    docks fit the screen and each scrolls when its content is taller (or wider) than its share.
    """
    body = QWidget()
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(body)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(body)


def fit_names(combo: QComboBox) -> QComboBox:
    """Keep ``combo`` at least as wide as its longest item: names are never cut, the dock scrolls instead.

    Qt keeps a combo box's minimum width from before its items changed, so it is set again on every change.
    """
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    model = combo.model()
    for signal in (model.rowsInserted, model.rowsRemoved, model.modelReset):
        signal.connect(lambda *args: combo.setMinimumWidth(combo.sizeHint().width()))
    combo.currentTextChanged.connect(combo.setToolTip)
    return combo


def combo_box(items: Iterable[str]) -> QComboBox:
    """A combo box holding ``items``, kept wide enough for them (:func:`fit_names`)."""
    combo = fit_names(QComboBox())
    combo.addItems(list(items))
    return combo


def refill(combo: QComboBox, items: list[str]) -> None:
    """Replace the items of ``combo`` without emitting its change signals."""
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    combo.blockSignals(False)


def spin_box(low: int, high: int, value: int) -> QSpinBox:
    """An integer field limited to ``low``..``high``, set to ``value``."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def double_spin_box(low: float, high: float, value: float) -> QDoubleSpinBox:
    """A decimal field limited to ``low``..``high``, set to ``value``."""
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def read_only_item(text: str) -> QTableWidgetItem:
    """A table cell showing ``text`` that the user cannot edit."""
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    return item


def model_folder_field() -> FileEdit:
    """The form field for a cell-classifier model folder; empty means the shipped model."""
    return FileEdit(
        name="model",
        label="Model",
        mode="d",
        nullable=True,
        tooltip="Classifier model folder; leave empty for the shipped default model.",
    )
