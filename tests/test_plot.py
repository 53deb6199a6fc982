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
