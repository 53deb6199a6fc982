"""Plots inside the docks: matplotlib figures drawn off napari's GUI thread, and the plot types they share.

Every plot has a title, labelled axes and a legend or colour bar, and is laid out for the page's width
(:data:`~napari_hematology.widgets._workspace.PAGE_WIDTH`): it follows the dock's width and has a fixed
height, so the page scrolls down rather than sideways. Importing matplotlib (about a second), building a
figure and rendering it (50-350 ms for a 20,000-point scatter) would each stall napari's GUI thread past
200 ms, so :meth:`PlotArea.plot` does all three in a worker thread with matplotlib's Agg renderer (no
pyplot, so no shared state) and the GUI thread only shows the finished image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from napari_hematology.widgets._workspace import PAGE_WIDTH

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
FONT_SIZE = 7
SMALL_FONT_SIZE = 6  # tick labels and counts of a heatmap with many classes
MANY_CLASSES = 6
TITLE_SIZE = 8
MAX_POINTS = 20_000  # a scatter draws at most this many events (a fixed random choice)
SAMPLE_SEED = 0
LEGEND_COLUMNS = 2
LEGEND_ROW_PX = 14
BAR_PX = 18  # the height of one bar of a bar chart
SCATTER_PX = 300  # the height of a scatter plot without its legend
FRAME_PX = 70  # a plot's title, axis label and margins around its bars or cells
# a heatmap's margins beside its cells (its axis label and the figure's edges), and above and below them
# (title, axis label and a colour bar under the names)
HEATMAP_SIDE_PX = 40
HEATMAP_FRAME_PX = 120
HEATMAP_CMAP = "Blues"
HEATMAP_PAD = 1 / 72  # inches around a heatmap's parts (constrained layout's default is 3 / 72)
RESIZE_DELAY_MS = 150  # a plot is drawn again for a new width once the dock stops changing size

DrawFunction = Callable[["Figure"], int]
"""Draws on an empty figure and returns the height in pixels the plot needs."""


def render(draw: DrawFunction, width: int, pixel_ratio: float) -> tuple[Figure, int, np.ndarray]:
    """Draw a figure ``width`` widget pixels wide with matplotlib's Agg renderer (any thread).

    Args:
        draw: Draws the plot on the empty figure and returns its height in widget pixels.
        width: Width in widget pixels.
        pixel_ratio: Device pixels per widget pixel (more than 1 on a high-density screen).

    Returns:
        The figure, its height in widget pixels and its ``(h, w, 4)`` RGBA image in device pixels.

    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(dpi=DPI * pixel_ratio, layout="constrained")
    FigureCanvasAgg(figure)
    figure.set_size_inches(width / DPI, SCATTER_PX / DPI)
    height = draw(figure)
    figure.set_size_inches(width / DPI, height / DPI)
    figure.canvas.draw()
    return figure, height, np.asarray(figure.canvas.buffer_rgba()).copy()


_RENDERER = ThreadPoolExecutor(1, thread_name_prefix="plots")  # one at a time: renders are short


class _Rendered(QObject):
    """Carries a finished render from the drawing thread to the GUI thread (a queued signal)."""

    done = Signal(int, int, object)


class PlotArea(QWidget):
    """A place for one figure in a dock: as wide as the page, no height until something is plotted.

    :meth:`plot` draws in a worker thread; the last figure shown stays in :attr:`figure` (read it, do not
    draw on it). A newer plot, or :meth:`clear`, supersedes one still being drawn.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure: Figure | None = None
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        # the image never widens the page: a new width draws the plot again instead
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image)
        self._draw: DrawFunction | None = None
        self._generation = 0
        self._pending = False
        self._drawn_width = 0
        self._rendered = _Rendered(self)
        self._rendered.done.connect(self._show)
        self._resized = QTimer(self, singleShot=True, interval=RESIZE_DELAY_MS)
        self._resized.timeout.connect(self._redraw_for_width)

    @property
    def drawing(self) -> bool:
        """Whether a plot is being drawn and not yet shown."""
        return self._pending

    def plot(self, draw: DrawFunction) -> None:
        """Draw a plot in a worker thread and show it when done (the GUI thread only shows the image).

        Args:
            draw: Draws on an empty figure (no pyplot) and returns the plot's height in pixels.

        """
        self._draw = draw
        self._generation += 1
        self._pending = True
        width = self.width() if self.isVisible() else PAGE_WIDTH
        _RENDERER.submit(self._render, self._generation, draw, width, self.devicePixelRatioF())

    def _render(self, generation: int, draw: DrawFunction, width: int, pixel_ratio: float) -> None:
        """In the drawing thread: render, then hand the result to the GUI thread."""
        try:
            result = render(draw, width, pixel_ratio)
        except Exception as error:  # noqa: BLE001 (shown to the user in the GUI thread, never raised here)
            result = error
        with contextlib.suppress(RuntimeError):  # the dock was closed while its plot was drawn
            self._rendered.done.emit(generation, width, result)

    def _show(self, generation: int, width: int, result) -> None:
        if generation != self._generation:
            return  # a newer plot, or a clear, came after this one
        self._pending = False
        if isinstance(result, Exception):
            from napari_hematology.widgets._runner import report_error

            report_error(result)
            return
        figure, height, rgba = result
        self.figure, self._drawn_width = figure, width
        rows, columns = rgba.shape[:2]
        image = QImage(rgba.data, columns, rows, 4 * columns, QImage.Format.Format_RGBA8888)
        pixmap = QPixmap.fromImage(image)  # a copy: the array may go
        pixmap.setDevicePixelRatio(self.devicePixelRatioF())
        self.image.setPixmap(pixmap)
        self.setFixedHeight(height)

    def clear(self) -> None:
        """Show nothing and give the area no height (a plot still being drawn is dropped)."""
        self._generation += 1
        self._pending = False
        self._draw = None
        self.figure = None
        self.image.clear()
        self.setFixedHeight(0)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if self._draw is not None and abs(self.width() - self._drawn_width) > 1:
            self._resized.start()

    def _redraw_for_width(self) -> None:
        if self._draw is not None and self.isVisible():
            self.plot(self._draw)


def _label(axes: Axes, title: str, x: str, y: str, tick_size: float = FONT_SIZE) -> None:
    """Give ``axes``'s figure a title and ``axes`` axis labels, in the plots' font sizes."""
    axes.figure.suptitle(title, fontsize=TITLE_SIZE)
    axes.set_xlabel(x, fontsize=FONT_SIZE)
    axes.set_ylabel(y, fontsize=FONT_SIZE)
    axes.tick_params(labelsize=tick_size)


def scatter_height(categories: int) -> int:
    """Pixels for a scatter plot with a legend of ``categories`` names."""
    return SCATTER_PX + LEGEND_ROW_PX * math.ceil(categories / LEGEND_COLUMNS)


def category_scatter(
    figure: Figure, points: np.ndarray, categories: Sequence[str], colours: Mapping[str, str], *,
    title: str, x: str, y: str,
) -> tuple[Axes, int]:
    """Scatter ``points`` coloured by category, with a legend of every name in ``colours``, in its order.

    At most :data:`MAX_POINTS` points are drawn, a fixed random choice, in random order (so no category
    hides another by being drawn last).

    Args:
        figure: An empty figure (the one :meth:`PlotArea.plot` gives its draw function).
        points: ``(n, 2)`` x and y.
        categories: The category of each point, a key of ``colours``.
        colours: ``{category: "#rrggbb"}``.
        title: The plot's title.
        x: The x axis's label, with its unit.
        y: The y axis's label, with its unit.

    Returns:
        The axes, and how many points were drawn.

    """
    from matplotlib.colors import to_rgba_array
    from matplotlib.lines import Line2D

    chosen = np.random.default_rng(SAMPLE_SEED).permutation(len(points))[:MAX_POINTS]
    index = {name: position for position, name in enumerate(colours)}
    palette = to_rgba_array(list(colours.values()))
    axes = figure.add_subplot()
    axes.scatter(
        points[chosen, 0], points[chosen, 1], c=palette[[index[categories[i]] for i in chosen]],
        s=float(np.clip(3000 / max(len(chosen), 1), 1, 16)), linewidths=0,
    )
    handles = [
        Line2D([], [], linestyle="", marker="o", markersize=5, color=colour, label=name)
        for name, colour in colours.items()
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=LEGEND_COLUMNS, fontsize=FONT_SIZE,
                  frameon=False, handletextpad=0.2, columnspacing=1.0)
    _label(axes, title, x, y)
    return axes, len(chosen)


def bars_height(bars: int) -> int:
    """Pixels for a horizontal bar chart of ``bars`` bars."""
    return FRAME_PX + BAR_PX * max(bars, 2)


def share_bars(
    figure: Figure, shares: Mapping[str, float], colours: Mapping[str, str], *, title: str, x: str, y: str
) -> Axes:
    """One horizontal bar per name, its share in percent written at its end, the first name on top.

    Args:
        figure: An empty figure (the one :meth:`PlotArea.plot` gives its draw function).
        shares: ``{name: percent}``.
        colours: ``{name: "#rrggbb"}`` for every name of ``shares``.
        title: The plot's title.
        x: The share axis's label.
        y: The names' axis's label.

    Returns:
        The axes.

    """
    axes = figure.add_subplot()
    names = list(shares)
    bars = axes.barh(range(len(names)), list(shares.values()), color=[colours[n] for n in names],
                     edgecolor="black", linewidth=0.3)
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.bar_label(bars, fmt="%.1f", fontsize=FONT_SIZE, padding=2)
    axes.set_xlim(0, max(max(shares.values(), default=0.0) * 1.2, 1.0))
    _label(axes, title, x, y)
    return axes


def count_heatmap(
    figure: Figure, counts: np.ndarray, rows: Sequence[str], columns: Sequence[str], unit: str, *,
    title: str, x: str, y: str,
) -> tuple[Axes, int]:
    """Counts as coloured square cells, the count written in each but the empty ones, names, a colour bar.

    Args:
        figure: An empty figure (the one :meth:`PlotArea.plot` gives its draw function).
        counts: ``(rows, columns)`` whole numbers.
        rows: The name of each row (left).
        columns: The name of each column (below, turned upright so that long names fit).
        unit: What is counted, the colour bar's label.
        title: The plot's title.
        x: The columns' axis label.
        y: The rows' axis label.

    Returns:
        The axes, and the height in pixels that shows the cells as wide as the figure leaves them.

    """
    size = FONT_SIZE if max(len(rows), len(columns)) <= MANY_CLASSES else SMALL_FONT_SIZE
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap=HEATMAP_CMAP, vmin=0)
    axes.set_xticks(range(len(columns)), columns, rotation=90)
    axes.set_yticks(range(len(rows)), rows)
    dark = counts.max(initial=0) / 2
    for row, column in zip(*np.nonzero(counts), strict=True):  # an empty cell is a zero (the colour bar's)
        count = counts[row, column]
        text = axes.text(column, row, str(int(count)), ha="center", va="center", fontsize=size,
                         color="white" if count > dark else "black")
        text.set_in_layout(False)  # inside the cells: the layout need not measure them
    _label(axes, title, x, y, tick_size=size)
    axes.tick_params(length=0)  # every pixel of the page's width to the cells: no tick marks, thin margins
    figure.get_layout_engine().set(w_pad=HEATMAP_PAD, h_pad=HEATMAP_PAD)
    bar = figure.colorbar(image, ax=axes, location="bottom", shrink=0.6, aspect=30)
    bar.set_label(unit, fontsize=FONT_SIZE)
    bar.ax.tick_params(labelsize=FONT_SIZE)
    return axes, _heatmap_height(axes, len(rows) / len(columns))


def _heatmap_height(axes: Axes, shape: float) -> int:
    """The height in pixels that gives square cells, as wide as the row names leave, and the column names.

    ``shape`` is the number of rows per column.
    """
    figure = axes.figure
    renderer = figure.canvas.get_renderer()
    scale = DPI / figure.dpi  # display pixels (more on a high-density screen) to the widget's pixels
    names_width = max(label.get_window_extent(renderer).width for label in axes.get_yticklabels()) * scale
    names_height = max(label.get_window_extent(renderer).height for label in axes.get_xticklabels()) * scale
    width = figure.get_figwidth() * DPI - names_width - HEATMAP_SIDE_PX
    return round(HEATMAP_FRAME_PX + max(width, 0.3 * PAGE_WIDTH) * shape + names_height)
