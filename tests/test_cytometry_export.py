"""Results back where the lab works: FCS with cluster parameters, AnnData, per-cluster marker summary."""

from pathlib import Path

import anndata
import flowio
import numpy as np
import pandas as pd
import pytest

from napari_hematology.core.cytometry.export import (
    ClusterAssignment,
    cluster_names_from_keywords,
    marker_summary,
    write_fcs_with_clusters,
    write_h5ad,
)
from napari_hematology.core.cytometry.fcs import read_fcs
from napari_hematology.core.errors import InputError

NAMES = ["FSC-A", "FL1-A", "FL2-A"]
SPILL = "2,FL1-A,FL2-A,1,0.1,0.05,1"


@pytest.fixture
def source(tmp_path) -> Path:
    events = np.random.default_rng(0).uniform(10, 1000, size=(200, 3))
    path = tmp_path / "source.fcs"
    with open(path, "wb") as handle:
        flowio.create_fcs(
            handle,
            events.astype(np.float32).ravel(),
            NAMES,
            ["", "CD3", "CD19"],
            {"spill": SPILL, "cyt": "Aria"},
        )
    return path


def assignment(count: int, stage: str = "cluster", names=None, seed: int = 1) -> ClusterAssignment:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    labels[:5] = -1
    probability = np.where(labels >= 0, rng.uniform(0.3, 1.0, count), np.nan)
    return ClusterAssignment(labels, probability, names, stage)


def test_fcs_with_clusters_reads_back_in_flowio_and_here(source, tmp_path):
    sample = read_fcs(source)
    lineage = assignment(200, "lineage", ["T cells", "B/NK cells", "other"])
    subtype = assignment(200, "subtype", seed=2)
    out = write_fcs_with_clusters(source, tmp_path / "out.fcs", [lineage, subtype])
    data = flowio.FlowData(str(out))
    assert data.pnn_labels == [*NAMES, "lineage", "lineage_probability", "subtype", "subtype_probability"]
    events = data.as_array(preprocess=False)
    np.testing.assert_allclose(events[:, :3], sample.events, rtol=1e-6)
    np.testing.assert_array_equal(events[:, 3], lineage.labels)
    np.testing.assert_allclose(events[:, 4], np.nan_to_num(lineage.probability), rtol=1e-6)
    again = read_fcs(out)
    assert again.spill is not None and again.spill[0] == ["FL1-A", "FL2-A"]
    assert again.keywords["cyt"] == "Aria" and again.markers[:3] == ["", "CD3", "CD19"]
    assert cluster_names_from_keywords(again.keywords, "lineage") == {
        0: "T cells",
        1: "B/NK cells",
        2: "other",
    }
    assert cluster_names_from_keywords(again.keywords, "subtype") == {}


def test_fcs_writer_refuses_mismatched_assignments(source, tmp_path):
    with pytest.raises(InputError, match="stage 'cluster' has 10 labels for 200 events"):
        write_fcs_with_clusters(source, tmp_path / "bad.fcs", [assignment(10)])
    with pytest.raises(InputError, match="stage names repeat"):
        write_fcs_with_clusters(source, tmp_path / "bad.fcs", [assignment(200), assignment(200)])


@pytest.mark.data
def test_integer_instrument_file_round_trips(shared_data, tmp_path):
    path = shared_data / "cytometry" / "instruments" / "fcsparser_Cytek_xP5_Cytek_xP5.fcs"
    sample = read_fcs(path)
    out = write_fcs_with_clusters(sample, tmp_path / "cytek.fcs", [assignment(len(sample.events))])
    again = read_fcs(out)
    np.testing.assert_allclose(again.events[:, :8], sample.events, rtol=1e-6)
    assert again.names[:8] == sample.names and not again.notes


def test_h5ad_has_events_channels_samples_and_named_clusters(source, tmp_path):
    sample = read_fcs(source)
    other = read_fcs(source)
    other.path = tmp_path / "other.fcs"
    names = ["T cells", "B cells", "NK cells"]
    per_sample = [[assignment(200, names=names)], [assignment(200, names=names, seed=3)]]
    preprocessed = [np.arcsinh(s.events[:, 1:] / 150) for s in (sample, other)]
    out = write_h5ad(tmp_path / "batch.h5ad", [sample, other], per_sample, ["CD3", "FL2-A"], preprocessed)
    adata = anndata.read_h5ad(out)
    assert adata.shape == (400, 2) and list(adata.var_names) == ["FL1-A", "FL2-A"]
    assert list(adata.var["marker"]) == ["CD3", "CD19"]
    assert list(adata.obs["sample"].cat.categories) == ["source.fcs", "other.fcs"]
    assert list(adata.obs["cluster"].cat.categories) == names
    assert adata.obs["cluster"].isna().sum() == 10  # the unassigned events
    first = per_sample[0][0]
    assigned = first.labels >= 0
    expected = np.asarray(names, dtype=object)[first.labels[assigned]]
    assert list(adata.obs["cluster"].iloc[:200][assigned]) == list(expected)
    np.testing.assert_allclose(adata.layers["preprocessed"][:200], preprocessed[0], rtol=1e-6)
    np.testing.assert_allclose(adata.X[:200], sample.events[:, 1:], rtol=1e-6)


def test_marker_summary_names_what_is_high_and_low():
    rng = np.random.default_rng(0)
    t_cells = rng.normal([3.0, 0.5, 2.5], 0.2, size=(300, 3))
    b_cells = rng.normal([0.5, 3.0, 0.5], 0.2, size=(100, 3))
    values = np.concatenate([t_cells, b_cells, [[9.0, 9.0, 9.0]]])
    labels = np.array([0] * 300 + [1] * 100 + [-1])
    table = marker_summary(values, labels, ["CD3", "CD19", "CD4"], ["T", "B"])
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["T", "B"]
    assert table.loc["T", "events"] == 300 and table.loc["B", "fraction"] == pytest.approx(0.25)
    assert table.loc["T", "CD3"] == pytest.approx(3.0, abs=0.05)
    assert table.loc["B", "high"] == "CD19" and table.loc["B", "low"] == "CD3 CD4"
