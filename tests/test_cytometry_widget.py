"""Cytometry widget: load FCS files, run in the background, scatter with features, proportions."""

import numpy as np
import pytest
from test_cytometry import FAST, make_events, write_fcs


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


@pytest.mark.gui
def test_run_shows_points_table_and_chart(widget, qtbot, fcs_files):
    assert widget.load_files(fcs_files)
    assert widget.files_list.count() == 2
    assert widget.checked_channels() == ["FL1-A", "FL2-A", "FL3-A"]
    widget.clusters_spin.setValue(2)
    widget.epochs_spin.setValue(FAST["epochs"])
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    layer = widget.viewer.layers["w0 latent 1 vs latent 2"]
    assert layer.data.shape == (600, 2)
    assert {"event", "cluster", "prob_0", "prob_1"} <= set(layer.features.columns)
    assert widget.table.rowCount() == 2
    plt_fraction = sorted(float(widget.table.item(1, c).text()) for c in (2, 3))
    assert plt_fraction[0] == pytest.approx(1 / 6, abs=0.03)
    assert len(widget.chart.rows) == 2 and np.sum(widget.chart.rows[0][1]) == pytest.approx(1, abs=1e-3)

    widget.x_combo.setCurrentText("FL1-A")
    widget.y_combo.setCurrentText("FL2-A")
    widget.file_combo.setCurrentIndex(1)
    widget.show_scatter()
    assert widget.viewer.layers["w1 FL1-A vs FL2-A"].data.shape == (600, 2)


@pytest.mark.gui
def test_bad_input_is_reported_not_raised(widget, tmp_path, fcs_files, monkeypatch):
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
