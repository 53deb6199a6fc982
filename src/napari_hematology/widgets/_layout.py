"""Layout helpers shared by the docks.

A scrolling body, so docks never grow the main window, combo boxes wide enough for the names they hold, and
small constructors of form fields and read-only table cells.
"""

from __future__ import annotations

from collections.abc import Iterable

from magicgui.widgets import FileEdit
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QLabel,
    QScrollArea,
    QSpinBox,
    QStyle,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


def scrolling_layout(dock: QWidget) -> QVBoxLayout:
    """Give ``dock`` a scroll area, make it a page of the plugin's workspace, and return the layout to fill.

    The dock asks for no more than a scroll bar, and opens as a tab of the plugin's other docks
    (:func:`~napari_hematology.widgets._workspace.join_workspace`); it scrolls when its content is taller
    than the window.
    """
    from napari_hematology.widgets._workspace import join_workspace

    join_workspace(dock)
    body = QWidget()
    area = _PageArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(body)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(body)


class _PageArea(QScrollArea):
    """A scroll area asking the width of its content's minimum and a vertical scroll bar.

    A page that scrolls down then never scrolls sideways too, and leaves the canvas every pixel it does not
    need.
    """

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """The content's minimum width plus a scroll bar's; the content's height."""
        hint = super().sizeHint()
        body = self.widget()
        if body is None:
            return hint
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        width = body.minimumSizeHint().width() + bar + 2 * self.frameWidth()
        return QSize(width, max(hint.height(), body.sizeHint().height()))


def canvas_size(viewer) -> tuple[int, int]:
    """The canvas's height and width on screen, in pixels (800 x 800 where napari does not say)."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None or min(size) <= 0:
        return 800, 800
    return int(size[0]), int(size[1])


def form_layout(parent: QWidget | None = None) -> QFormLayout:
    """A form whose fields go under their labels when the page is too narrow for both side by side."""
    form = QFormLayout(parent) if parent is not None else QFormLayout()
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    return form


def note(text: str = "") -> QLabel:
    """A label that wraps its text to the page's width instead of widening the page."""
    label = QLabel(text)
    label.setWordWrap(True)
    return label


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


def refill(combo: QComboBox, items: list[str], data: list | None = None) -> None:
    """Replace the items of ``combo`` (each with its ``data`` if given) without emitting change signals."""
    combo.blockSignals(True)
    combo.clear()
    for position, item in enumerate(items):
        combo.addItem(item, None if data is None else data[position])
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
