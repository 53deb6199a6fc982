"""Layout helpers shared by the docks.

A scrolling body, so docks never grow the main window, and combo boxes wide enough for the names they hold.
"""

from __future__ import annotations

from magicgui.widgets import FileEdit
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QVBoxLayout, QWidget


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


def model_folder_field() -> FileEdit:
    """The form field for a cell-classifier model folder; empty means the shipped model."""
    return FileEdit(
        name="model",
        label="Model",
        mode="d",
        nullable=True,
        tooltip="Classifier model folder; leave empty for the shipped default model.",
    )
