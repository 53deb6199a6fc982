"""The docks' shared plots (``widgets/_plot``): a large scatter is a sample drawn in the right colours."""

import numpy as np
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure

from napari_hematology.widgets._plot import MAX_POINTS, category_scatter


def test_a_large_scatter_draws_a_sample_each_point_in_its_categorys_colour():
    events = 3 * MAX_POINTS
    categories = np.array(["a", "b", "c"])[np.random.default_rng(1).integers(0, 3, events)]
    points = np.column_stack([np.arange(events), np.zeros(events)])  # x names the event
    colours = {"c": "#ff0000", "a": "#00ff00", "b": "#0000ff"}
    figure = Figure()
    axes, drawn = category_scatter(figure, points, categories, colours, title="events", x="x", y="y")
    offsets = axes.collections[0].get_offsets()
    assert drawn == len(offsets) == MAX_POINTS
    chosen = offsets[:, 0].astype(int)
    assert len(set(chosen)) == MAX_POINTS, "each event drawn once"
    assert not np.all(np.diff(chosen) > 0), "drawn in random order, not category after category"
    expected = to_rgba_array([colours[name] for name in categories[chosen]])
    np.testing.assert_array_equal(axes.collections[0].get_facecolors(), expected)
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["c", "a", "b"]


def test_plot_area_draws_off_the_gui_thread_and_shows_only_the_latest_plot(qtbot):
    import threading

    import pytest

    from napari_hematology.widgets._plot import PlotArea

    area = PlotArea()
    qtbot.addWidget(area)
    threads = []

    def draw_titled(title: str, height: int):
        def draw(figure) -> int:
            threads.append(threading.get_ident())
            figure.add_subplot().set_title(title)
            return height
        return draw

    area.plot(draw_titled("old", 120))
    area.plot(draw_titled("new", 150))
    assert area.drawing
    qtbot.waitUntil(lambda: not area.drawing, timeout=10_000)
    assert threading.get_ident() not in threads
    assert area.figure.axes[0].get_title() == "new" and area.height() == 150
    assert area.image.pixmap().height() == pytest.approx(150 * area.devicePixelRatioF(), abs=1)
    area.clear()
    assert area.figure is None and area.height() == 0
