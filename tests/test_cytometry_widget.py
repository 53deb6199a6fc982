"""Cytometry widget: preprocessing shown, background run, plots in one palette with axes and legends, naming,
export."""

import anndata
import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea
from test_cytometry import FAST, make_events, write_fcs

from napari_hematology.core.cytometry import read_fcs, sample_proportions
from napari_hematology.core.cytometry.export import cluster_names_from_keywords
from napari_hematology.widgets._palette import category_colours

# FlowSOM's seven lineage markers in ff.fcs (as bench_cytometry.py clusters it).
FF_MARKERS = ["CD8", "TCRyd", "TCRb", "NK1/1", "CD4", "CD19", "CD3"]


@pytest.fixture
def widget(make_napari_viewer):
    from napari_hematology.widgets.cytometry import CytometryWidget

    viewer = make_napari_viewer()
    widget = CytometryWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


@pytest.fixture
def fcs_files(tmp_path):
    paths = []
    for i, counts in enumerate(({"plt": 300, "pure": 300}, {"plt": 100, "pure": 500})):
        paths.append(write_fcs(tmp_path / f"w{i}.fcs", make_events(counts, seed=i)[0]))
    return paths


def load(widget, qtbot, paths) -> bool:
    """Load files as the dock does (read in its worker); whether they became the dock's batch."""
    before = widget.batch
    widget.load_files(paths)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    return widget.batch is not before and widget.batch is not None


def run_and_wait(widget, qtbot, clusters: int) -> None:
    widget.clusters_spin.setValue(clusters)
    widget.epochs_spin.setValue(FAST["epochs"])
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert widget.result is not None


def hex_colours(rgba) -> list[str]:
    return ["#{:02x}{:02x}{:02x}".format(*(round(v * 255) for v in colour[:3])) for colour in rgba]


def shown_figure(area, qtbot):
    """The figure a plot area shows, once drawn (plots are drawn in a worker thread)."""
    qtbot.waitUntil(lambda: not area.drawing and area.figure is not None, timeout=10_000)
    return area.figure


def scatter_axes(widget, qtbot):
    """The scatter's axes, its points and the names in its legend."""
    figure = shown_figure(widget.scatter_plot, qtbot)
    axes = figure.axes[0]
    (legend,) = figure.legends
    return axes, axes.collections[0], [text.get_text() for text in legend.get_texts()]


def bar_chart(widget, qtbot) -> tuple:
    """The proportions chart's axes, and its bars' population names, percents and colours."""
    axes = shown_figure(widget.shares_plot, qtbot).axes[0]
    names = [label.get_text() for label in axes.get_yticklabels()]
    bars = axes.patches
    return axes, names, [bar.get_width() for bar in bars], hex_colours(bar.get_facecolor() for bar in bars)


@pytest.mark.gui
def test_run_plots_scatter_and_shares_with_axes_and_legends_in_one_palette(widget, qtbot, fcs_files):
    assert load(widget, qtbot, fcs_files)
    assert widget.files_list.count() == 2
    assert widget.checked_channels() == ["FL1-A", "FL2-A", "FL3-A"]
    assert "w0.fcs: raw values: no compensation, arcsinh (cofactor 150) on 3 channel(s)" in (
        widget.preprocessing_text.toPlainText()
    )
    widget.transform_combo.setCurrentText("none")
    assert "w1.fcs: raw values: no compensation, no transform" in widget.preprocessing_text.toPlainText()
    widget.transform_combo.setCurrentText("auto")
    run_and_wait(widget, qtbot, clusters=2)
    assert len(widget.viewer.layers) == 0, "the plots are in the dock, not in napari's canvas"
    colours = category_colours(["0", "1"])
    axes, points, legend = scatter_axes(widget, qtbot)
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.figure.get_suptitle()) == (
        "latent PC 1", "latent PC 2", "w0.fcs: 600 events"
    )
    assert len(points.get_offsets()) == 600
    assert set(hex_colours(points.get_facecolors())) == set(colours.values())
    assert legend == ["0", "1"]
    axes, names, percents, bar_colours = bar_chart(widget, qtbot)
    assert names == ["0", "1"] and bar_colours == list(colours.values())
    assert sum(percents) == pytest.approx(100, abs=1e-6)
    assert (axes.get_xlabel(), axes.figure.get_suptitle()) == ("% of events", "Populations in w0.fcs")
    swatches = [widget.populations.item(row, 0).background().color().name() for row in range(2)]
    assert swatches == list(colours.values())
    assert widget.table.rowCount() == 2
    plt_fraction = sorted(float(widget.table.item(1, c).text()) for c in (2, 3))
    assert plt_fraction[0] == pytest.approx(1 / 6, abs=0.03)

    x_items = [widget.x_combo.itemText(i) for i in range(widget.x_combo.count())]
    assert x_items == ["latent space", "CD45 (FL1-A)", "CD61 (FL2-A)", "CD71 (FL3-A)"]
    widget.x_combo.setCurrentText("CD45 (FL1-A)")
    widget.y_combo.setCurrentText("CD61 (FL2-A)")
    widget.file_combo.setCurrentIndex(1)  # each choice plots again: no button to press
    axes, points, legend = scatter_axes(widget, qtbot)
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.figure.get_suptitle()) == (
        "CD45 (FL1-A), arcsinh(x / 150)", "CD61 (FL2-A), arcsinh(x / 150)", "w1.fcs: 600 events"
    )
    values = widget.result.values(1, ["FL1-A", "FL2-A"])
    np.testing.assert_allclose(np.sort(points.get_offsets(), axis=0), np.sort(values, axis=0))
    _, _, percents, _ = bar_chart(widget, qtbot)
    expected = 100 * sample_proportions(widget.result.stages[0].probabilities[1])
    np.testing.assert_allclose(percents, expected)
    assert min(percents) == pytest.approx(100 / 6, abs=3)

    window = widget.viewer.window._qt_window
    window.resize(1280, 800)
    window.show()
    area = widget.scatter_plot
    ratio = area.devicePixelRatioF()

    def drawn_for_the_width() -> bool:  # a new width draws the plot again, in the worker
        return not area.drawing and round(area.figure.bbox.width) == round(area.width() * ratio)

    qtbot.waitUntil(drawn_for_the_width, timeout=5000)
    assert area.image.pixmap().width() == round(area.width() * ratio) and area.height() > 0
    assert widget.findChild(QScrollArea).horizontalScrollBar().maximum() == 0, "the plots fit the page"


@pytest.mark.gui
def test_the_scatter_is_laid_out_in_the_drawing_thread(widget, qtbot, fcs_files, monkeypatch):
    import threading

    from napari_hematology.core import cytometry

    threads = []
    original = cytometry.scatter_coordinates

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(cytometry, "scatter_coordinates", recording)
    assert load(widget, qtbot, fcs_files)
    run_and_wait(widget, qtbot, clusters=2)
    assert len(scatter_axes(widget, qtbot)[1].get_offsets()) == 600
    assert threads and threading.get_ident() not in threads, "the latent PCA ran in napari's GUI thread"


@pytest.mark.gui
def test_a_child_stage_plots_its_parents_events_only(widget, qtbot, fcs_files, tmp_path):
    from test_cytometry import STAGES_YAML

    fast = "populations: [PLT, RBC], epochs: 4, pretrain_epochs: 4}"
    (tmp_path / "stages.yaml").write_text(STAGES_YAML.replace("populations: [PLT, RBC]}", fast))
    assert load(widget, qtbot, fcs_files)
    widget.stages_edit.setText(str(tmp_path / "stages.yaml"))
    run_and_wait(widget, qtbot, clusters=2)
    widget.stage_combo.setCurrentText("rbc")
    lineage = widget.result.stages[0]
    rbc = lineage.stage.population_names.index("RBC")
    rbc_events = int((lineage.probabilities[0].argmax(axis=1) == rbc).sum())
    assert 250 < rbc_events < 350  # 300 of w0's 600 events are red cells
    axes, points, legend = scatter_axes(widget, qtbot)
    assert legend == ["pure", "retic"] and len(points.get_offsets()) == rbc_events
    assert axes.figure.get_suptitle() == f"w0.fcs: {rbc_events} events"
    axes, names, percents, _ = bar_chart(widget, qtbot)
    assert names == ["pure", "retic"] and sum(percents) == pytest.approx(100)
    assert (axes.get_xlabel(), axes.figure.get_suptitle()) == ("% of RBC events", "rbc populations in w0.fcs")


@pytest.mark.gui
def test_names_given_in_the_table_reach_chart_scatter_and_exports(widget, qtbot, fcs_files, tmp_path):
    assert load(widget, qtbot, fcs_files)
    run_and_wait(widget, qtbot, clusters=2)
    widget.populations.item(0, 1).setText("red cells")
    widget.populations.item(1, 1).setText("platelets")
    assert widget.population_names() == ["red cells", "platelets"]
    assert scatter_axes(widget, qtbot)[2] == ["red cells", "platelets"]
    assert bar_chart(widget, qtbot)[1] == ["red cells", "platelets"]
    written = widget.save_results(tmp_path / "saved")
    assert (tmp_path / "saved" / "markers.csv") in written
    fcs = read_fcs(tmp_path / "saved" / "fcs" / "w1_clusters.fcs")
    assert cluster_names_from_keywords(fcs.keywords) == {0: "red cells", 1: "platelets"}
    adata = anndata.read_h5ad(tmp_path / "saved" / "events.h5ad")
    assert set(adata.obs["cluster"].cat.categories) == {"red cells", "platelets"}


@pytest.mark.gui
def test_bad_input_is_reported_in_the_widgets_terms(widget, tmp_path, fcs_files, monkeypatch, qtbot):
    shown = []
    monkeypatch.setattr("napari_hematology.widgets.cytometry.report_error", shown.append)
    monkeypatch.setattr("napari_hematology.widgets._runner.report_error", shown.append)
    broken = tmp_path / "broken.fcs"
    broken.write_bytes(b"FCS3.0 truncated")
    assert not load(widget, qtbot, [fcs_files[0], broken])
    assert "broken.fcs: cannot be read as FCS" in str(shown[-1])
    other = write_fcs(tmp_path / "other.fcs", make_events({"plt": 50})[0], markers=["", "CD3", "CD4", "CD8"])
    assert not load(widget, qtbot, [fcs_files[0], other])
    assert "other.fcs has a different panel" in str(shown[-1])
    assert load(widget, qtbot, fcs_files)
    widget.stages_edit.setText(str(tmp_path / "absent.yaml"))
    widget.run()
    assert "no such stages file" in str(shown[-1])
    widget.show_plots()
    assert widget.scatter_plot.figure is None and not widget.runner.busy
    widget.stages_edit.setText("")
    run_and_wait(widget, qtbot, clusters=2)
    assert not widget.rename_populations(["same", "same"])
    assert "non-empty and unique" in str(shown[-1])
    assert widget.population_names() == ["0", "1"]
    assert not any("--" in str(error) for error in shown)


@pytest.mark.gui
@pytest.mark.data
def test_ff_fcs_is_drawn_on_its_own_scale_not_as_one_dot(widget, qtbot, shared_data):
    ff = shared_data / "cytometry" / "flowsom" / "ff.fcs"
    assert load(widget, qtbot, [ff])
    for row in range(widget.channels_list.count()):
        item = widget.channels_list.item(row)
        marker = item.text().split(" (")[0]
        item.setCheckState(Qt.CheckState.Checked if marker in FF_MARKERS else Qt.CheckState.Unchecked)
    assert len(widget.checked_channels()) == 7
    text = widget.preprocessing_text.toPlainText()
    assert "ff.fcs: transformed values: no compensation, no transform" in text
    assert "spillover matrix, but its values are transformed" in text
    run_and_wait(widget, qtbot, clusters=7)
    widget.x_combo.setCurrentText("CD3 (PE-Cy7-A)")
    widget.y_combo.setCurrentText("CD19 (PE-Cy5-A)")
    axes, points, legend = scatter_axes(widget, qtbot)
    assert axes.get_xlabel() == "CD3 (PE-Cy7-A), transformed in the file"
    data = points.get_offsets()
    assert (data.std(axis=0) > 0.3).all() and (np.ptp(data, axis=0) > 2.0).all()  # logicle units, 0..4.5
    for limits, values in ((axes.get_xlim(), data[:, 0]), (axes.get_ylim(), data[:, 1])):
        assert limits[0] <= values.min() and values.max() <= limits[1] < values.max() + np.ptp(values)
    assert len(set(hex_colours(points.get_facecolors()))) == 7 and len(legend) == 7


@pytest.mark.gui
def test_auto_cluster_count_and_marker_names_are_shown(widget, qtbot, tmp_path):
    from test_cytometry_names import COUNTS, blood, write

    path = write(tmp_path / "blood.fcs", blood(COUNTS)[0])
    assert load(widget, qtbot, [path])
    assert widget.clusters_spin.text() == "auto"
    run_and_wait(widget, qtbot, clusters=1)  # the lowest value is "auto"
    assert widget.count_label.text().startswith("cluster: 5 clusters (chosen from the data: smallest ICL")
    assert "named by blood_markers.yaml (shipped)" in widget.count_label.text()
    assert sorted(widget.population_names()) == sorted(COUNTS)
    assert sorted(scatter_axes(widget, qtbot)[2]) == sorted(bar_chart(widget, qtbot)[1]) == sorted(COUNTS)


def test_the_transform_choices_are_the_cores():
    from napari_hematology.core.cytometry.fcs import TRANSFORMS
    from napari_hematology.widgets.cytometry import TRANSFORM_CHOICES

    assert ("auto", *TRANSFORMS) == TRANSFORM_CHOICES


@pytest.mark.gui
def test_one_model_per_file_shares_the_autoencoder_and_shows_each_files_populations(widget, qtbot, fcs_files):
    from napari_hematology.widgets.cytometry import MODEL_CHOICES

    assert load(widget, qtbot, fcs_files)
    widget.models_combo.setCurrentText(next(k for k, pooled in MODEL_CHOICES.items() if not pooled))
    assert widget.pipeline_config().pooled is False
    run_and_wait(widget, qtbot, clusters=2)
    stage = widget.result.stages[0]
    assert len(stage.clusterers) == 2  # one model per file
    np.testing.assert_array_equal(stage.clusterers[0].mean, stage.clusterers[1].mean)  # one pretraining
    widget.file_combo.setCurrentIndex(1)
    _, names, shares, _ = bar_chart(widget, qtbot)
    assert len(names) == 2 and sum(shares) == pytest.approx(100.0, abs=0.5)
