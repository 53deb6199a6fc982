"""A colour legend for the docks: one swatch and name per class, cluster or cell type."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from qtpy.QtWidgets import QLabel, QWidget


class Legend(QLabel):
    """Swatches with names, wrapped to the dock's width; ``colours`` holds what is shown."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.colours: dict[str, str] = {}
        self.setWordWrap(True)

    def set_colours(self, colours: Mapping[str, str]) -> None:
        """Show ``{name: "#rrggbb"}`` in the given order (an empty mapping hides the legend)."""
        self.colours = dict(colours)
        items = [
            f'<span style="color:{colour}">&#9632;</span>&nbsp;{escape(str(name))}'
            for name, colour in self.colours.items()
        ]
        heading = f"<b>{escape(self.title)}</b> " if self.title and items else ""
        self.setText(heading + " &nbsp; ".join(items))
        self.setVisible(bool(items))
