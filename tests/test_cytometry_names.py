"""Cytometry: the number of clusters chosen from the data, names from a marker table, bad files in a batch."""

import json
from pathlib import Path

import anndata
import flowio
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_hematology.cli import main
from napari_hematology.core.cytometry import (
    ClusterConfig,
    MarkerTable,
    fit_clusterer,
    load_marker_table,
    name_clusters,
    run_pipeline,
    single_stage_config,
)
from napari_hematology.core.cytometry.export import cluster_names_from_keywords
from napari_hematology.core.cytometry.fcs import read_fcs
from napari_hematology.core.cytometry.initialisation import integrated_completed_likelihood
from napari_hematology.core.cytometry.naming import gap_threshold, marker_channels
from napari_hematology.core.cytometry.stage_config import pipeline_config_from_dict
from napari_hematology.core.errors import InputError

FAST = {"pretrain_epochs": 3, "epochs": 3, "batch_size": 128, "min_pretrain_steps": 40, "init_restarts": 4}
# A small blood panel in arcsinh units (cofactor 150): every population differs from the others in a marker.
PANEL = ["CD3-FITC", "CD4-PE", "CD8-APC", "CD19-PC7", "CD56-BV421", "CD14-BV510"]
POPULATIONS = {
    "CD4 T": (4.0, 4.0, 0.5, 0.5, 0.5, 0.5),
    "CD8 T": (4.0, 0.5, 4.0, 0.5, 0.5, 0.5),
    "B": (0.5, 0.5, 0.5, 4.0, 0.5, 0.5),
    "NK": (0.5, 0.5, 0.5, 0.5, 4.0, 0.5),
    "monocytes": (0.5, 2.0, 0.5, 0.5, 0.5, 4.0),
}


def blood(counts: dict[str, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw (linear) events of the PANEL populations, and each event's population."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for name, count in counts.items():
        blocks.append(rng.normal(POPULATIONS[name], 0.3, size=(count, len(PANEL))))
        labels += [name] * count
    order = rng.permutation(len(labels))
    return np.sinh(np.concatenate(blocks))[order] * 150.0, np.asarray(labels)[order]


def write(path: Path, events: np.ndarray, markers=PANEL) -> Path:
    names = [f"FL{i + 1}-A" for i in range(events.shape[1])]
    with open(path, "wb") as handle:
        flowio.create_fcs(
            handle, events.astype(np.float32).ravel(), names, opt_channel_names=list(markers)
        )
    return path


COUNTS = {"CD4 T": 900, "CD8 T": 500, "B": 400, "NK": 250, "monocytes": 300}


@pytest.fixture(scope="module")
def blood_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    events, labels = blood(COUNTS)
    return write(tmp_path_factory.mktemp("blood") / "blood.fcs", events), labels


def test_the_number_of_clusters_is_chosen_from_the_data_and_reported():
    events, truth = blood(COUNTS, seed=1)
    values = np.arcsinh(events / 150.0)
    clusterer = fit_clusterer(values, PANEL, ClusterConfig.from_settings(**FAST))
    choice = clusterer.extra["cluster_count"]
    assert choice["chosen"] == len(COUNTS) == len(clusterer.populations)
    assert choice["tried"][0] == 2 and "ICL" in choice["rule"]
    predicted = clusterer.assign(values).argmax(axis=1)
    assert adjusted_rand_score(truth, predicted) > 0.95
    # a given number of clusters is used as given
    given = fit_clusterer(values, PANEL, ClusterConfig.from_settings(clusters=3, **FAST))
    assert len(given.populations) == 3 and given.extra["cluster_count"] == {"chosen": 3, "rule": "given"}


def test_icl_prefers_the_true_partition_to_a_split_or_a_merge():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(6, 1, (500, 2))])
    truth = np.repeat([0, 1], 500)
    split = truth + (x[:, 0] > 6)  # one population cut in two
    merged = np.zeros(1000, dtype=int)
    icl = integrated_completed_likelihood
    assert icl(x, truth, 2) < icl(x, split, 3)
    assert icl(x, truth, 2) < icl(x, merged, 1)
    assert icl(x, np.arange(1000) % 2, 2) > icl(x, truth, 2)
    assert icl(x[:3], np.array([0, 1, 1]), 2) is None  # too few events for a covariance


def test_nothing_to_split_gives_one_population_unless_a_count_is_given():
    config = ClusterConfig.from_settings(**FAST)
    few = fit_clusterer(np.arange(8.0).reshape(4, 2), ["A", "B"], config)
    assert few.populations == ["0"] and "only 4 events" in few.extra["cluster_count"]["rule"]
    np.testing.assert_array_equal(few.assign(np.arange(8.0).reshape(4, 2)), np.ones((4, 1)))
    flat = np.full((300, 2), 7.0)
    same = fit_clusterer(flat, ["A", "B"], config)
    assert same.extra["cluster_count"]["chosen"] == 1 and "same values" in same.extra["cluster_count"]["rule"]
    with pytest.raises(InputError, match="nothing to split into 3 clusters; leave the number of clusters"):
        fit_clusterer(flat, ["A", "B"], ClusterConfig.from_settings(clusters=3, **FAST))


def test_gap_threshold_gives_rare_positive_populations_their_level():
    # 95 % negative around 1, a 3 % positive cluster at 3.4: the gap between cluster medians, not the
    # events' distribution, decides
    medians = np.array([1.05, 1.2, 1.28, 1.16, 3.37])
    values = np.concatenate([np.random.default_rng(0).normal(1.2, 0.5, 970), np.full(30, 3.37)])
    assert 1.28 < gap_threshold(medians, values) < 3.37
    assert gap_threshold(np.array([1.0, 1.1, 1.15]), values) is None  # no gap: marker not used


def test_marker_names_match_labels_with_fluorochromes_and_metal_tags():
    table = load_marker_table()
    found = marker_channels(table, ["FSC-A", "145Nd_CD4", "CD3-FITC", "NK1/1", "TCRyd", "cd19 PE"])
    assert found == {"CD3": 2, "CD4": 1, "TCRgd": 4, "B": 5, "NK": 3}


def test_clusters_are_named_from_marker_levels():
    events, truth = blood(COUNTS)
    values = np.arcsinh(events / 150.0)
    names_of = sorted(COUNTS)
    labels = np.searchsorted(names_of, truth)
    naming = name_clusters(values, labels, len(names_of), PANEL, load_marker_table())
    assert naming.names == names_of  # B, CD4 T, CD8 T, NK, monocytes
    assert naming.rules[names_of.index("CD4 T")].startswith("CD3+ CD4+ CD8-")
    assert naming.channels["NK"] == "CD56-BV421"
    # a cluster that matches no population, and two clusters of one population
    odd = np.where(labels == names_of.index("NK"), len(names_of), labels)
    values[odd == len(names_of), 4] = 0.5  # CD56 now negative: CD3- CD19- CD56- CD14-
    naming = name_clusters(values, odd, len(names_of) + 1, PANEL, load_marker_table())
    assert naming.names[names_of.index("NK")] == "unassigned"  # no events left in it
    assert naming.names[-1] == "unassigned (2)"
    assert "no population of the table matches" in naming.rules[-1]


def test_a_user_table_renames_and_bad_tables_are_refused_in_one_line(tmp_path):
    table = tmp_path / "table.yaml"
    table.write_text("markers:\n  CD19: [CD19]\npopulations:\n  B lymphocytes: {CD19: '+'}\n")
    assert load_marker_table(table).populations == {"B lymphocytes": {"CD19": "+"}}
    bad = {
        "markers: [CD3]\n": "expected 'markers:' and 'populations:' mappings",
        "markers: {CD3: [CD3]}\npopulations: {T: {CD4: '+'}}\n": "uses marker\\(s\\) CD4 that are not listed",
        "markers: {CD3: [CD3]}\npopulations: {T: {CD3: high}}\n": "has level\\(s\\) CD3: high; use \\+ or -",
        "markers: {CD3: [CD3]}\npopulations: {T: {CD3: '-'}}\n": "needs at least one '\\+' marker",
        "markers: {CD3: [CD3]}\npopulations: {unassigned: {CD3: '+'}}\n": "'unassigned' is kept",
        "markers: {CD3: [CD3\n": "not valid YAML",
    }
    for text, problem in bad.items():
        table.write_text(text)
        with pytest.raises(InputError, match=rf"table\.yaml: .*{problem}") as error:
            load_marker_table(table)
        assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="no such marker table"):
        load_marker_table(tmp_path / "missing.yaml")


def test_names_reach_the_csv_fcs_anndata_and_populations_json(tmp_path, blood_file, capsys):
    path, truth = blood_file
    out = tmp_path / "out"
    code = main(
        ["cytometry", "cluster", str(path), "--out", str(out), "--fcs-out", str(out / "fcs"),
         "--h5ad", str(out / "events.h5ad"), "--epochs", "3"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "cluster: 5 clusters (chosen from the data: smallest ICL" in printed
    cells = np.loadtxt(out / "blood_clusters.csv", delimiter=",", skiprows=1, usecols=1, dtype=str)
    assert (cells == truth).mean() > 0.95  # the names are the populations' own
    record = json.loads((out / "populations.json").read_text())["stages"][0]
    assert record["clusters"] == 5 and record["cluster_count"]["chosen"] == 5
    assert record["named_by"] == "marker table" and record["marker_table"] == "blood_markers.yaml (shipped)"
    assert {c["name"] for c in record["populations"]} == set(COUNTS)
    written = read_fcs(out / "fcs" / "blood_clusters.fcs")
    names = cluster_names_from_keywords(written.keywords)
    assert sorted(names.values()) == sorted(COUNTS)
    assert np.mean(np.array([names[int(k)] for k in written.events[:, -2]]) == truth) > 0.95
    adata = anndata.read_h5ad(out / "events.h5ad")
    assert set(adata.obs["cluster"].cat.categories) == set(COUNTS)


def test_cluster_override_and_markers_none_keep_numbers(tmp_path, blood_file, capsys):
    path, _ = blood_file
    out = tmp_path / "numbers"
    main(["cytometry", "cluster", str(path), "--out", str(out), "--clusters", "3", "--markers", "none",
          "--epochs", "2"])
    assert "cluster: 3 clusters (given); populations: 0, 1, 2" in capsys.readouterr().out
    record = json.loads((out / "populations.json").read_text())["stages"][0]
    assert record["named_by"] == "numbers (not named)" and record["cluster_count"]["rule"] == "given"


def test_stage_yaml_clusters_auto_and_parents_need_a_count():
    config = pipeline_config_from_dict({"stages": [{"name": "all", "clusters": "auto"}]})
    assert config.stages[0].clusters is None and config.markers == "default"
    named = pipeline_config_from_dict({"stages": [{"name": "all", "populations": ["a", "b"]}]})
    assert named.stages[0].clusters == 2
    with pytest.raises(InputError, match="whose number of clusters is left to the data"):
        pipeline_config_from_dict(
            {"stages": [{"name": "all"}, {"name": "sub", "clusters": 2, "parent": "all",
                                          "parent_population": "0"}]}
        )


def test_one_bad_file_in_a_batch_is_reported_and_skipped(tmp_path, blood_file, capsys):
    path, _ = blood_file
    broken = tmp_path / "broken.fcs"
    broken.write_bytes(b"FCS3.0 truncated")
    out = tmp_path / "out"
    assert main(["cytometry", "cluster", str(broken), str(path), "--out", str(out), "--clusters", "5",
                 "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "skipped: broken.fcs: cannot be read as FCS" in printed
    assert json.loads((out / "preprocessing.json").read_text())["files_skipped"][0].startswith("broken.fcs")
    assert (out / "blood_clusters.csv").is_file()
    # a batch of bad files only still stops, with the first file's one-line message
    with pytest.raises(InputError, match="broken.fcs: cannot be read as FCS"):
        run_pipeline([broken], single_stage_config(clusters=2))


def test_constant_channels_only_give_one_population(tmp_path, capsys):
    flags = write(tmp_path / "flags.fcs", np.full((200, 2), 528.0), markers=["CD3", "CD19"])
    assert main(["cytometry", "cluster", str(flags), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Every chosen channel is constant (FL1-A, FL2-A)" in printed
    assert "cluster: 1 cluster (chosen from the data: one population: every event has the same" in printed


def test_marker_table_dataclass_is_exported():
    assert isinstance(load_marker_table(), MarkerTable)
