"""The Cytometry dock's proportion chart: one stacked bar of population fractions per file."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QWidget


class ProportionChart(QWidget):
    """Stacked horizontal bars: one bar per file (named on the left), one colour per population."""

    LABEL_WIDTH = 0.3

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[tuple[str, list[float]]] = []
        self.colours: dict[str, str] = {}
        self.setMinimumHeight(120)

    def set_proportions(self, files: list[str], proportions: np.ndarray, colours: dict[str, str]) -> None:
        """Show one row of population fractions per file, in the order and colours of ``colours``."""
        self.rows = [
            (str(f), [float(v) for v in values]) for f, values in zip(files, proportions, strict=True)
        ]
        self.colours = dict(colours)
        self.setToolTip(
            "\n".join(
                f"{file}: " + ", ".join(f"{p} {v:.1%}" for p, v in zip(self.colours, values, strict=True))
                for file, values in self.rows
            )
        )
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Draw the bars, the file names, and the population names where they fit."""
        if not self.rows:
            return
        painter = QPainter(self)
        label_width = self.width() * self.LABEL_WIDTH
        bar_width = self.width() - label_width
        height = self.height() / len(self.rows)
        names = list(self.colours)
        for row, (file, values) in enumerate(self.rows):
            top = row * height
            painter.setPen(self.palette().windowText().color())
            painter.drawText(QRectF(0, top, label_width - 4, height), _RIGHT_MIDDLE, file)
            left = label_width
            for name, value in zip(names, values, strict=True):
                box = QRectF(left, top + 1, value * bar_width, height - 2)
                painter.fillRect(box, QColor(self.colours[name]))
                if painter.fontMetrics().horizontalAdvance(name) < box.width() - 4:
                    painter.setPen(_text_colour(self.colours[name]))
                    painter.drawText(box, Qt.AlignmentFlag.AlignCenter, name)
                left += box.width()
        painter.end()


_RIGHT_MIDDLE = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


def _text_colour(background: str) -> QColor:
    return QColor("black") if QColor(background).lightnessF() > 0.5 else QColor("white")
