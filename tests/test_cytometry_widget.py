"""Cytometry widget: preprocessing shown, background run, scatter and chart in one palette, naming, export."""

import anndata
import numpy as np
import pytest
from qtpy.QtCore import Qt
from test_cytometry import FAST, make_events, write_fcs

from napari_hematology.core.cytometry import read_fcs
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


def run_and_wait(widget, qtbot, clusters: int) -> None:
    widget.clusters_spin.setValue(clusters)
    widget.epochs_spin.setValue(FAST["epochs"])
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert widget.result is not None


def face_colours(layer) -> set[str]:
    return {"#{:02x}{:02x}{:02x}".format(*(round(v * 255) for v in rgba[:3])) for rgba in layer.face_color}


@pytest.mark.gui
def test_run_shows_points_table_and_chart_in_one_palette(widget, qtbot, fcs_files):
    assert widget.load_files(fcs_files)
    assert widget.files_list.count() == 2
    assert widget.checked_channels() == ["FL1-A", "FL2-A", "FL3-A"]
    assert "w0.fcs: raw values: no compensation, arcsinh (cofactor 150) on 3 channel(s)" in (
        widget.preprocessing_text.toPlainText()
    )
    widget.transform_combo.setCurrentText("none")
    assert "w1.fcs: raw values: no compensation, no transform" in widget.preprocessing_text.toPlainText()
    widget.transform_combo.setCurrentText("auto")
    run_and_wait(widget, qtbot, clusters=2)
    layer = widget.viewer.layers["w0 latent 1 vs latent 2"]
    assert layer.data.shape == (600, 2)
    assert {"event", "cluster", "prob_0", "prob_1"} <= set(layer.features.columns)
    colours = category_colours(["0", "1"])
    assert face_colours(layer) == set(colours.values())
    assert widget.chart.colours == colours and [r[0] for r in widget.chart.rows] == ["w0.fcs", "w1.fcs"]
    swatches = [widget.populations.item(row, 0).background().color().name() for row in range(2)]
    assert swatches == list(colours.values())
    assert widget.table.rowCount() == 2
    plt_fraction = sorted(float(widget.table.item(1, c).text()) for c in (2, 3))
    assert plt_fraction[0] == pytest.approx(1 / 6, abs=0.03)
    assert np.sum(widget.chart.rows[0][1]) == pytest.approx(1, abs=1e-3)

    x_items = [widget.x_combo.itemText(i) for i in range(widget.x_combo.count())]
    assert x_items == ["latent space", "CD45 (FL1-A)", "CD61 (FL2-A)", "CD71 (FL3-A)"]
    widget.x_combo.setCurrentText("CD45 (FL1-A)")
    widget.y_combo.setCurrentText("CD61 (FL2-A)")
    widget.file_combo.setCurrentIndex(1)
    widget.show_scatter()
    assert widget.viewer.layers["w1 CD45 (FL1-A) vs CD61 (FL2-A)"].data.shape == (600, 2)


@pytest.mark.gui
def test_names_given_in_the_table_reach_chart_scatter_and_exports(widget, qtbot, fcs_files, tmp_path):
    assert widget.load_files(fcs_files)
    run_and_wait(widget, qtbot, clusters=2)
    widget.populations.item(0, 1).setText("red cells")
    widget.populations.item(1, 1).setText("platelets")
    assert widget.population_names() == ["red cells", "platelets"]
    assert list(widget.chart.colours) == ["red cells", "platelets"]
    layer = widget.viewer.layers["w0 latent 1 vs latent 2"]
    assert set(layer.features["cluster"]) == {"red cells", "platelets"}
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
    broken = tmp_path / "broken.fcs"
    broken.write_bytes(b"FCS3.0 truncated")
    assert not widget.load_files([fcs_files[0], broken])
    assert "broken.fcs: cannot be read as FCS" in str(shown[-1])
    other = write_fcs(tmp_path / "other.fcs", make_events({"plt": 50})[0], markers=["", "CD3", "CD4", "CD8"])
    assert not widget.load_files([fcs_files[0], other])
    assert "other.fcs has a different panel" in str(shown[-1])
    assert widget.load_files(fcs_files)
    widget.stages_edit.setText(str(tmp_path / "absent.yaml"))
    widget.run()
    assert "no such stages file" in str(shown[-1])
    widget.show_scatter()
    assert len(widget.viewer.layers) == 0 and not widget.runner.busy
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
    assert widget.load_files([ff])
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
    widget.show_scatter()
    layer = widget.viewer.layers["ff CD3 (PE-Cy7-A) vs CD19 (PE-Cy5-A)"]
    spread = layer.data.std(axis=0)
    assert (spread > 0.3).all() and (np.ptp(layer.data, axis=0) > 2.0).all()  # logicle units, 0..4.5
    assert float(np.mean(layer.size)) < 0.1 * spread.min()
    assert len(face_colours(layer)) == 7


@pytest.mark.gui
def test_auto_cluster_count_and_marker_names_are_shown(widget, qtbot, tmp_path):
    from test_cytometry_names import COUNTS, blood, write

    path = write(tmp_path / "blood.fcs", blood(COUNTS)[0])
    assert widget.load_files([path])
    assert widget.clusters_spin.text() == "auto (chosen from the data)"
    run_and_wait(widget, qtbot, clusters=1)  # the lowest value is "auto"
    assert widget.count_label.text().startswith("cluster: 5 clusters (chosen from the data: smallest ICL")
    assert "named by blood_markers.yaml (shipped)" in widget.count_label.text()
    assert sorted(widget.population_names()) == sorted(COUNTS)
    layer = widget.viewer.layers["blood latent 1 vs latent 2"]
    assert set(layer.features["cluster"]) == set(COUNTS)


def test_the_transform_choices_are_the_cores():
    from napari_hematology.core.cytometry.fcs import TRANSFORMS
    from napari_hematology.widgets.cytometry import TRANSFORM_CHOICES

    assert ("auto", *TRANSFORMS) == TRANSFORM_CHOICES
