"""Cytometry backend: FCS reading, transforms, IDEC/VaDE, staged pipelines, soft labels, CLI, bad input."""

import dataclasses
import json
from pathlib import Path

import anndata
import flowio
import numpy as np
import pandas as pd
import pytest
from conftest import run_fresh_python
from sklearn.metrics import adjusted_rand_score

from napari_hematology.cli import main
from napari_hematology.core.cytometry import (
    ClusterConfig,
    apply_pipeline,
    cell_table,
    channel_indices,
    compensate,
    fit_clusterer,
    load_pipeline_config,
    proportions_table,
    read_batch,
    read_fcs,
    run_pipeline,
    sample_proportions,
    save_pipeline,
    scatter_coordinates,
    single_stage_config,
    transform,
    write_outputs,
)
from napari_hematology.core.cytometry.scales import value_scale
from napari_hematology.core.errors import Cancelled, InputError
from napari_hematology.core.training import TrainConfig, train

NAMES = ["FSC-A", "FL1-A", "FL2-A", "FL3-A"]
MARKERS = ["", "CD45", "CD61", "CD71"]
# Population centres in arcsinh units (cofactor 150): lineage 1 splits into three subtypes on FL3.
CENTRES = {
    "plt": (1.0, 1.0, 4.0, 1.0),
    "pure": (3.0, 3.5, 1.0, 1.0),
    "retic": (3.0, 3.5, 1.0, 3.0),
    "clump": (4.5, 3.5, 1.0, 4.5),
    "doublet": (6.0, 6.0, 6.0, 6.0),
}
FAST = {"pretrain_epochs": 4, "epochs": 4, "batch_size": 128}


def fast_config(method: str = "idec", clusters: int = 3) -> ClusterConfig:
    """A clustering config that trains briefly (the FAST settings)."""
    return ClusterConfig.from_settings(method=method, clusters=clusters, **FAST)


def make_events(counts: dict[str, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for name, count in counts.items():
        blocks.append(rng.normal(CENTRES[name], 0.25, size=(count, 4)))
        labels += [name] * count
    order = rng.permutation(len(labels))
    raw = np.sinh(np.concatenate(blocks)) * 150.0
    return raw[order], np.asarray(labels)[order]


def write_fcs(path: Path, events: np.ndarray, names=NAMES, markers=MARKERS, metadata=None) -> Path:
    with open(path, "wb") as handle:
        flowio.create_fcs(
            handle,
            events.astype(np.float32).ravel().tolist(),
            list(names),
            opt_channel_names=list(markers),
            metadata_dict=metadata or {},
        )
    return path


@pytest.fixture
def two_files(tmp_path):
    paths, labels = [], []
    for i, counts in enumerate(
        ({"plt": 300, "pure": 500, "retic": 200}, {"plt": 200, "pure": 300, "retic": 500})
    ):
        events, truth = make_events(counts, seed=i)
        paths.append(write_fcs(tmp_path / f"s{i}.fcs", events))
        labels.append(truth)
    return paths, labels


def test_read_fcs_names_markers_and_channel_selection(two_files):
    sample = read_fcs(two_files[0][0])
    assert sample.events.shape == (1000, 4)
    assert sample.names == NAMES and sample.markers == MARKERS
    assert channel_indices(sample, ["CD61", "fl1-a", "cd71"]) == [2, 1, 3]
    with pytest.raises(InputError, match=r"s0\.fcs: no channel named 'CD3'.*CD45 \(FL1-A\)"):
        channel_indices(sample, ["CD3"])


def test_compensation_undoes_the_spillover_matrix(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.uniform(100, 1000, size=(50, 4))
    spill = np.array([[1.0, 0.2, 0.0], [0.1, 1.0, 0.05], [0.0, 0.3, 1.0]])
    measured = true.copy()
    measured[:, 1:] = true[:, 1:] @ spill
    text = "3,FL1-A,FL2-A,FL3-A," + ",".join(f"{v:.6f}" for v in spill.ravel())
    sample = read_fcs(write_fcs(tmp_path / "spill.fcs", measured, metadata={"spill": text}))
    assert sample.spill is not None and sample.spill[0] == ["FL1-A", "FL2-A", "FL3-A"]
    np.testing.assert_allclose(compensate(sample), true, rtol=1e-4)


def test_transforms():
    values = np.array([-1000.0, 0.0, 150.0, 262144.0])
    np.testing.assert_allclose(transform(values, "arcsinh", 150.0), np.arcsinh(values / 150.0))
    logicle = transform(values, "logicle")
    assert np.all(np.diff(logicle) > 0)
    assert logicle[-1] == pytest.approx(4.5, abs=1e-3)
    assert logicle[1] == pytest.approx(0.5, abs=1e-2)  # zero sits W = 0.5 decades up the scale
    with pytest.raises(InputError, match="Unknown transform 'log10'"):
        transform(values, "log10")


def test_corrupt_and_truncated_fcs_are_refused_by_name(tmp_path, two_files):
    garbage = tmp_path / "garbage.fcs"
    garbage.write_bytes(b"not an fcs file at all" * 10)
    truncated = tmp_path / "truncated.fcs"
    truncated.write_bytes(two_files[0][0].read_bytes()[:3000])
    for path in (garbage, truncated):
        with pytest.raises(InputError, match=rf"{path.name}: cannot be read as FCS"):
            read_fcs(path)


def test_mixed_panels_and_missing_channels_in_a_batch(tmp_path, two_files):
    events, _ = make_events({"plt": 50})
    other = write_fcs(tmp_path / "other_panel.fcs", events, markers=["", "CD45", "CD3", "CD19"])
    with pytest.raises(InputError, match=r"other_panel\.fcs has a different panel.*missing: CD61 \(FL2-A\)"):
        read_batch([two_files[0][0], other])
    with pytest.raises(InputError, match=r"other_panel\.fcs: no channel named 'CD61'"):
        read_batch([two_files[0][0], other], channels=["CD45", "CD61"])


def test_nan_and_constant_channels_are_named(tmp_path):
    events, _ = make_events({"plt": 100, "pure": 100})
    events[5, 2] = np.nan
    config = single_stage_config(clusters=2, settings=FAST)
    with pytest.raises(InputError, match=r"nan\.fcs: channel\(s\) CD61 \(FL2-A\) hold NaN"):
        run_pipeline([write_fcs(tmp_path / "nan.fcs", events)], config)
    events[:, 2] = 7.0
    result = run_pipeline([write_fcs(tmp_path / "constant.fcs", events)], config)
    assert result.config.channels == ["FL1-A", "FL3-A"]
    assert result.batch.warnings == [
        "CD61 (FL2-A): every event has the value 7 (a flag or a dead detector); left out of clustering."
    ]
    events[:, 1] = 3.0
    flags = read_batch([write_fcs(tmp_path / "flags.fcs", events)], channels=["FL1-A", "FL2-A"])
    assert flags.channels == ["FL1-A", "FL2-A"]  # kept: they form one population (see test_cytometry_names)
    assert flags.warnings[0].startswith("Every chosen channel is constant (FL1-A, FL2-A)")


def test_preprocessing_is_decided_per_file_and_flags_override(tmp_path):
    raw, truth = make_events({"plt": 300, "pure": 300})
    transformed = write_fcs(tmp_path / "logged.fcs", np.arcsinh(raw / 150.0))
    linear = write_fcs(tmp_path / "linear.fcs", raw)
    config = single_stage_config(clusters=2, settings=FAST)
    result = run_pipeline([linear, transformed], config)
    first, second = result.batch.preprocessing
    assert (first.state, first.transform, first.cofactor) == ("raw", "arcsinh", 150.0)
    assert (second.state, second.transform, second.transform_channels) == ("transformed", "none", [])
    np.testing.assert_allclose(result.values(0, ["CD45"]), result.values(1, ["CD45"]), atol=1e-4)
    scales = [  # the plots' axis units
        (0, first, "arcsinh(x / 150)"),
        (0, dataclasses.replace(first, transform="logicle"), "logicle"),
        (0, dataclasses.replace(first, transform="none"), "linear"),
        (1, second, "transformed in the file"),
    ]
    for index, decision, scale in scales:
        assert value_scale(result.samples[index], "CD45", decision) == scale
    for index in (0, 1):
        assert adjusted_rand_score(truth, cell_table(result, index)["cluster"]) > 0.9
    forced = run_pipeline([transformed], dataclasses.replace(config, transform="arcsinh", cofactor=5.0))
    assert forced.batch.preprocessing[0].transform_channels == ["FL1-A", "FL2-A", "FL3-A"]
    assert any("again (arcsinh), as asked" in w for w in forced.batch.preprocessing[0].warnings)
    with pytest.raises(InputError, match="Unknown transform 'log'"):
        single_stage_config(transform="log").check()


@pytest.mark.parametrize("method", ["idec", "vade"])
def test_each_method_alone_recovers_separated_populations(method):
    raw, truth = make_events({"plt": 300, "pure": 600, "clump": 100})
    values = transform(raw[:, 1:], "arcsinh", 150.0)
    clusterer = fit_clusterer(values, MARKERS[1:], fast_config(method))
    probabilities = clusterer.assign(values)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert adjusted_rand_score(truth, probabilities.argmax(axis=1)) > 0.9


def test_small_population_keeps_its_cluster_beside_a_large_one():
    """A 2 % population next to one 30 times larger must not be absorbed (IDEC's summed kernel did)."""
    raw, truth = make_events({"pure": 1500, "plt": 500, "retic": 50})
    values = transform(raw[:, 1:], "arcsinh", 150.0)
    for method in ("idec", "vade"):
        clusterer = fit_clusterer(values, MARKERS[1:], fast_config(method))
        predicted = clusterer.assign(values).argmax(axis=1)
        assert adjusted_rand_score(truth, predicted) > 0.9, method


def test_tiny_far_group_joins_a_cluster_instead_of_taking_one():
    """Doublets (0.5 % of the events, far from everything) must not cost a real population its cluster."""
    raw, truth = make_events({"pure": 800, "plt": 400, "retic": 400, "doublet": 8})
    values = transform(raw[:, 1:], "arcsinh", 150.0)
    real = truth != "doublet"
    for method in ("idec", "vade"):
        clusterer = fit_clusterer(values, MARKERS[1:], fast_config(method))
        predicted = clusterer.assign(values).argmax(axis=1)
        assert adjusted_rand_score(truth[real], predicted[real]) > 0.9, method


def test_cut_with_min_size_absorbs_small_groups_into_the_nearest():
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist, squareform

    from napari_hematology.core.cytometry.initialisation import cut_with_min_size

    positions = np.array([[0.0], [0.1], [5.0], [5.1], [10.0], [30.0]])
    sizes = np.array([100, 100, 100, 100, 100, 1])
    distances = pdist(positions)
    tree = linkage(distances, method="complete")
    groups = cut_with_min_size(tree, squareform(distances), sizes, 3, 0.01)
    assert len(set(groups[:5])) == 3 and groups[0] == groups[1] and groups[2] == groups[3]
    assert groups[5] == groups[4]  # the 1-event cell joins its nearest big group
    plain = cut_with_min_size(tree, squareform(distances), sizes, 3, 0.0)
    assert plain[5] != plain[4] and plain[2] == plain[4]  # without the rule it takes a cluster of its own


def test_tree_cuts_are_scipys_cuts_kept_for_the_next_call():
    from scipy.cluster.hierarchy import fcluster, linkage

    from napari_hematology.core.cytometry.initialisation import TreeCuts

    tree = linkage(np.random.default_rng(1).normal(size=(40, 3)), method="complete")
    cuts = TreeCuts(tree)
    for count in (2, 5, 5, 17):
        np.testing.assert_array_equal(cuts.cut(count), fcluster(tree, count, criterion="maxclust") - 1)
    assert cuts.cut(5) is cuts.cut(5)


def test_icl_of_grouped_cells_equals_the_icl_of_their_events():
    from napari_hematology.core.cytometry.initialisation import CellMoments, integrated_completed_likelihood

    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 3)) + np.repeat(np.eye(3) * 4, 200, axis=0)
    cells = rng.integers(0, 12, size=600)
    grouping = np.arange(12) % 3
    from_cells = CellMoments.of(x, cells, 12).icl(grouping, 3)
    np.testing.assert_allclose(from_cells, integrated_completed_likelihood(x, grouping[cells], 3), rtol=1e-10)
    covariances = [np.cov(x[grouping[cells] == k].T) for k in range(3)]
    direct = sum(
        (grouping[cells] == k).sum() * (np.log((grouping[cells] == k).mean()) - 0.5 * (
            3 * np.log(2 * np.pi) + np.linalg.slogdet(c + 1e-3 * np.eye(3))[1]))
        - 0.5 * ((grouping[cells] == k).sum() - 1) * 3
        for k, c in enumerate(covariances)
    )
    np.testing.assert_allclose(from_cells, -2 * direct + (3 * (3 + 6) + 2) * np.log(600), rtol=1e-10)


def test_nearest_centre_is_the_least_distance():
    from napari_hematology.core.cytometry.initialisation import OverClustering

    rng = np.random.default_rng(3)
    values = rng.normal(size=(500, 4)).astype(np.float32)
    centres = rng.normal(size=(30, 4)).astype(np.float32)
    distances = ((values[:, None, :] - centres[None]) ** 2).sum(axis=2)
    nearest = OverClustering(centres, np.zeros(0, dtype=int)).predict(values)
    np.testing.assert_array_equal(nearest, distances.argmin(axis=1))


def test_over_cluster_finds_separated_groups_and_their_means():
    from napari_hematology.core.cytometry.initialisation import over_cluster

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = np.repeat(np.arange(4), [400, 200, 100, 50])
    values = centres[truth] + rng.normal(scale=0.5, size=(len(truth), 2))
    cells = over_cluster(values, 4, seed=3)
    assert cells.cells == 4 and adjusted_rand_score(truth, cells.labels) == 1.0
    for cell in range(4):
        np.testing.assert_allclose(cells.centres[cell], values[cells.labels == cell].mean(axis=0), atol=1e-4)
    np.testing.assert_array_equal(cells.predict(values), cells.labels)
    np.testing.assert_array_equal(over_cluster(values, 4, seed=3).labels, cells.labels)  # seeded


def test_clustering_does_not_import_scikit_learn():
    """scikit-learn's import took longer than clustering a 20,000-event file: the command must not need it."""
    script = (
        "import sys, numpy as np\n"
        "from napari_hematology.core.cytometry import ClusterConfig, fit_clusterer\n"
        "values = np.random.default_rng(0).normal(size=(600, 3))\n"
        "values[300:] += 6\n"
        "clusterer = fit_clusterer(values, ['a', 'b', 'c'], ClusterConfig.from_settings(epochs=1, "
        "pretrain_epochs=1, min_pretrain_steps=1))\n"
        "print(len(clusterer.populations), 'sklearn' in sys.modules)\n"
    )
    assert run_fresh_python(script).split() == ["2", "False"]


def test_idec_assigns_each_event_to_its_nearest_centre_cluster():
    import torch

    from napari_hematology.core.registry import create_model

    model = create_model("idec", in_features=2, clusters=2, prototypes=5, latent_dim=2)
    model.centers.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    model.membership.copy_(torch.tensor([0, 0, 0, 0, 1]))
    latent = torch.tensor([[8.0, 0.0], [4.0, 0.0]])
    q = model.soft_assign(latent)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2))
    assert q.argmax(dim=1).tolist() == [1, 0]  # summing the kernels would give cluster 0 to the event at 8


def test_sample_proportions_count_assigned_events_and_skip_unseen():
    probabilities = np.array([[0.6, 0.4], [0.45, 0.55], [0.9, 0.1], [np.nan, np.nan]])
    np.testing.assert_allclose(sample_proportions(probabilities), [2 / 3, 1 / 3])
    np.testing.assert_allclose(sample_proportions(np.full((2, 3), np.nan)), [0.0, 0.0, 0.0])


def test_cancel_stops_training():
    values = np.random.default_rng(0).normal(size=(200, 3))
    with pytest.raises(Cancelled):
        fit_clusterer(values, ["a", "b", "c"], fast_config(clusters=2), should_stop=lambda: True)


STAGES_YAML = """
channels: [CD45, CD61, CD71, FSC-A]
transform: arcsinh
cofactor: 150
stages:
  - {name: lineage, method: idec, clusters: 2, populations: [PLT, RBC]}
  - name: rbc
    method: vade
    clusters: 2
    parent: lineage
    parent_population: RBC
    populations: [pure, retic]
    channels: [CD71, FSC-A]
    pretrain_epochs: 4
    epochs: 4
"""


def test_two_stage_pipeline_with_soft_labels_from_reference(tmp_path, two_files):
    paths, labels = two_files
    (tmp_path / "stages.yaml").write_text(STAGES_YAML)
    config = load_pipeline_config(tmp_path / "stages.yaml")
    config.stages[0].settings.update(FAST)
    rows = []
    for path, truth in zip(paths, labels, strict=False):
        rbc = truth != "plt"
        rows += [
            (path.stem, "PLT", np.mean(~rbc)),
            (path.stem, "RBC", np.mean(rbc)),
            (path.name, "pure", np.mean(truth[rbc] == "pure")),
            (path.name, "retic", np.mean(truth[rbc] == "retic")),
        ]
    pd.DataFrame(rows, columns=["file", "population", "fraction"]).to_csv(tmp_path / "ref.csv", index=False)
    result = run_pipeline(paths, config, tmp_path / "ref.csv")
    cells = cell_table(result, 1)
    assert list(cells.columns[:4]) == ["event", "population", "lineage", "prob_lineage_PLT"]
    expected = np.where(labels[1] == "plt", "PLT", labels[1])
    assert np.mean(cells["population"].to_numpy() == expected) > 0.95
    assert (cells.loc[cells["lineage"] == "PLT", "rbc"] == "").all()
    proportions = proportions_table(result)
    assert proportions["prop_rbc_retic"].tolist() == pytest.approx([0.2857, 0.625], abs=0.05)
    assert proportions["prop_lineage_PLT"].tolist() == pytest.approx([0.3, 0.2], abs=0.03)
    coordinates, axes = scatter_coordinates(result, 0, stage_index=1)
    assert axes == ["latent PC 1", "latent PC 2"]
    assert (
        np.isnan(coordinates[labels[0] == "plt"]).all()
        and np.isfinite(coordinates[labels[0] == "pure"]).all()
    )


def test_population_names_flow_into_tables_and_exports(tmp_path, two_files):
    from napari_hematology.core.cytometry import write_anndata, write_fcs_outputs
    from napari_hematology.core.cytometry.export import cluster_names_from_keywords

    paths, _ = two_files
    (tmp_path / "stages.yaml").write_text(STAGES_YAML)
    config = load_pipeline_config(tmp_path / "stages.yaml")
    config.stages[0].settings.update(FAST)
    result = run_pipeline(paths, config)
    result.rename("rbc", ["mature", "young"])
    assert "prop_rbc_young" in proportions_table(result).columns
    assert set(cell_table(result, 0)["rbc"]) <= {"", "mature", "young"}
    written = write_fcs_outputs(result, tmp_path / "fcs")
    keywords = read_fcs(written[0]).keywords
    assert cluster_names_from_keywords(keywords, "lineage") == {0: "PLT", 1: "RBC"}
    assert cluster_names_from_keywords(keywords, "rbc") == {0: "mature", 1: "young"}
    adata = anndata.read_h5ad(write_anndata(result, tmp_path / "run.h5ad"))
    assert list(adata.obs["rbc"].cat.categories) == ["mature", "young"]
    assert adata.obs.loc[adata.obs["lineage"] == "PLT", "rbc"].isna().all()
    with pytest.raises(InputError, match="splits 'lineage''s population 'RBC'; keep that name"):
        result.rename("lineage", ["PLT", "red cells"])
    with pytest.raises(InputError, match="non-empty and unique"):
        result.rename("rbc", ["same", "same"])


def test_reference_errors_name_the_file_and_population(tmp_path, two_files):
    paths, _ = two_files
    (tmp_path / "stages.yaml").write_text(STAGES_YAML)
    config = load_pipeline_config(tmp_path / "stages.yaml")
    cases = {
        "file,population,fraction\ns0,PLT,0.5\ns0,RBC,0.3\n": r"s0\.fcs in stage 'lineage' sum to 0\.800",
        "file,population,fraction\ns0,PLT,30\ns0,RBC,70\n": "between 0 and 1",
        "file,population,fraction\ns7,PLT,0.5\ns7,RBC,0.5\n": "file 's7' is not in this batch",
        "file,population,fraction\ns0,WBC,1.0\n": "population 'WBC' is not named in any stage",
        "file,population,fraction\ns0,PLT,1.0\n": r"s0\.fcs lacks fraction\(s\) for RBC",
        "file,share\ns0,1.0\n": "lacks column",
    }
    for number, (text, message) in enumerate(cases.items()):
        (tmp_path / f"ref{number}.csv").write_text(text)
        with pytest.raises(InputError, match=message):
            run_pipeline(paths, config, tmp_path / f"ref{number}.csv")


def test_stage_config_errors(tmp_path):
    bad = {
        "stages: []": "no stages",
        "stages: [{name: a, clusters: 2}, {name: a, clusters: 2}]": "Two stages are named 'a'",
        "stages: [{name: a, clusters: 2, parent: b, parent_population: x}]": "parent 'b' is not an earlier",
        "stages: [{name: a, clusters: 2, colour: red}]": r"unknown key\(s\) colour",
        "stages: [{name: a, clusters: 2, method: kmeans}]": "Unknown clustering method 'kmeans'",
        "stages: [{name: a, clusters: 3, populations: [x, y]}]": "2 population names for 3 clusters",
        "stages: [{name: a, clusters: 2, init_restarts: 0}]": "init_restarts must be at least 1",
        "stages: [{name: a, clusters: 4, min_cluster_fraction: 0.3}]": "min_cluster_fraction must be",
    }
    for number, (text, message) in enumerate(bad.items()):
        (tmp_path / f"s{number}.yaml").write_text(text)
        with pytest.raises(InputError, match=message):
            load_pipeline_config(tmp_path / f"s{number}.yaml")


def test_flat_stage_settings_fill_the_training_settings(tmp_path):
    (tmp_path / "stages.yaml").write_text(
        "seed: 3\nstages: [{name: a, clusters: 2, epochs: 7, batch_size: 32, latent_dim: 4}]\n"
    )
    config = load_pipeline_config(tmp_path / "stages.yaml")
    cluster = config.stages[0].cluster_config(config.seed)
    assert (cluster.train.epochs, cluster.train.batch_size, cluster.train.seed) == (7, 32, 3)
    assert cluster.latent_dim == 4
    assert ClusterConfig().train == TrainConfig(
        epochs=15, batch_size=512, learning_rate=4e-3, weight_decay=0.0, seed=0
    )


def test_clustering_is_fine_tuned_in_one_training_run(monkeypatch):
    from napari_hematology.core.cytometry import fitting

    runs = []

    def counted_train(*args, **kwargs):
        runs.append(kwargs.get("on_epoch_end"))
        return train(*args, **kwargs)

    monkeypatch.setattr(fitting, "train", counted_train)
    raw, _ = make_events({"plt": 100, "pure": 200})
    fit_clusterer(transform(raw[:, 1:], "arcsinh", 150.0), MARKERS[1:], fast_config(clusters=2))
    assert len(runs) == 2  # pretraining, then every clustering epoch
    assert runs[0] is None and runs[1] is not None


def test_per_file_models_share_one_pretrained_autoencoder(monkeypatch, tmp_path, two_files):
    """Per-file training pretrains once on the panel's pooled events; each file only clusters."""
    from napari_hematology.core.cytometry import fitting

    runs = []

    def counted_train(*args, **kwargs):
        runs.append(kwargs.get("on_epoch_end"))
        return train(*args, **kwargs)

    monkeypatch.setattr(fitting, "train", counted_train)
    paths, labels = two_files
    config = dataclasses.replace(single_stage_config(clusters=3, settings=dict(FAST)), pooled=False)
    result = run_pipeline(paths, config)
    pretraining = [hook for hook in runs if hook is None]
    assert len(pretraining) == 1 and len(runs) == 3  # one pretraining, one clustering run per file
    clusterers = result.stages[0].clusterers
    assert len(clusterers) == 2
    np.testing.assert_array_equal(clusterers[0].mean, clusterers[1].mean)  # the panel's standardisation
    for truth, probabilities in zip(labels, result.stages[0].probabilities, strict=True):
        assert adjusted_rand_score(truth, probabilities.argmax(axis=1)) > 0.9


def test_a_pretrained_autoencoder_for_other_channels_is_refused():
    from napari_hematology.core.cytometry.fitting import pretrain_panel

    raw, _ = make_events({"plt": 200, "pure": 200})
    values = transform(raw[:, 1:], "arcsinh", 150.0)
    panel = pretrain_panel(values, MARKERS[1:], fast_config())
    with pytest.raises(InputError, match="same channels"):
        fit_clusterer(values[:, :2], MARKERS[1:3], fast_config(), pretrained=panel)
    with pytest.raises(InputError, match="same channels"):
        fit_clusterer(values, MARKERS[1:], fast_config("vade"), pretrained=panel)


def test_saved_pipeline_reapplies_identically(tmp_path, two_files):
    paths, _ = two_files
    result = run_pipeline(paths[:1], single_stage_config(clusters=3, method="vade", settings=FAST))
    save_pipeline(result, tmp_path / "model")
    again = apply_pipeline(paths[:1], tmp_path / "model")
    np.testing.assert_allclose(again.stages[0].probabilities[0], result.stages[0].probabilities[0], atol=1e-5)
    written = write_outputs(again, tmp_path / "out")
    names = ["s0_clusters.csv", "markers.csv", "preprocessing.json", "populations.json", "proportions.csv"]
    assert [p.name for p in written] == names


def test_cli_cluster_contract(tmp_path, two_files, capsys):
    paths, labels = two_files
    out = tmp_path / "out"
    code = main(
        [
            "cytometry",
            "cluster",
            *map(str, paths),
            "--out",
            str(out),
            "--clusters",
            "3",
            "--method",
            "idec",
            "--channels",
            "CD45",
            "CD61",
            "CD71",
            "--epochs",
            "4",
            "--fcs-out",
            str(tmp_path / "fcs"),
            "--h5ad",
            str(tmp_path / "events.h5ad"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "s0.fcs: raw values: no compensation, arcsinh (cofactor 150) on 3 channel(s)" in printed
    cells = pd.read_csv(out / "s1_clusters.csv")
    assert list(cells.columns) == ["event", "cluster", "prob_0", "prob_1", "prob_2"]
    assert len(cells) == 1000 and adjusted_rand_score(labels[1], cells["cluster"]) > 0.9
    proportions = pd.read_csv(out / "proportions.csv")
    assert proportions["file"].tolist() == ["s0.fcs", "s1.fcs"]
    np.testing.assert_allclose(proportions[["prop_0", "prop_1", "prop_2"]].sum(axis=1), 1.0, atol=1e-3)
    assert proportions["preprocessing"].str.startswith("raw values").all()
    record = json.loads((out / "preprocessing.json").read_text())
    assert [f["file"] for f in record["files"]] == ["s0.fcs", "s1.fcs"]
    assert record["files"][0]["transform_channels"] == ["CD45", "CD61", "CD71"]
    markers = pd.read_csv(out / "markers.csv")
    assert list(markers.columns[:5]) == ["stage", "file", "population", "events", "fraction"]
    assert markers["events"].sum() == 2000 and {"CD45", "CD61", "CD71", "high", "low"} <= set(markers.columns)
    again = read_fcs(tmp_path / "fcs" / "s1_clusters.fcs")
    assert again.names[-2:] == ["cluster", "cluster_probability"]
    np.testing.assert_array_equal(again.events[:, -2], cells["cluster"])
    np.testing.assert_allclose(again.events[:, :4], read_fcs(paths[1]).events, rtol=1e-6)
    flow = flowio.FlowData(str(tmp_path / "fcs" / "s0_clusters.fcs"))
    assert flow.event_count == 1000 and flow.channel_count == 6
    adata = anndata.read_h5ad(tmp_path / "events.h5ad")
    assert adata.shape == (2000, 3) and list(adata.obs["sample"].cat.categories) == ["s0.fcs", "s1.fcs"]
    assert (adata.obs["cluster_probability"] > 0.3).all()


def test_cli_errors_are_one_line(tmp_path, two_files, capsys):
    paths, _ = two_files
    code = main(["cytometry", "cluster", str(paths[0]), "--out", str(tmp_path), "--channels", "CD99"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("napari-hematology: error: s0.fcs: no channel named 'CD99'") and "\n" not in error
    assert (
        main(
            [
                "cytometry",
                "pipeline",
                "--config",
                str(tmp_path / "missing.yaml"),
                str(paths[0]),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )


@pytest.mark.data
def test_reads_real_fcs_files(shared_data):
    folder = shared_data / "cytometry"
    flowsom = read_fcs(folder / "flowsom" / "ff.fcs")
    assert flowsom.events.shape == (19225, 18)
    assert flowsom.spill is not None and len(flowsom.spill[0]) == 11
    assert channel_indices(flowsom, ["CD3", "PE-Cy7-A"]) == [17, 17]
    fcs2 = read_fcs(folder / "flowkit_100715.fcs")
    assert fcs2.events.shape == (65016, 16)
    batch = read_batch(sorted((folder / "flowspy_time_course").glob("*.fcs")))
    assert len(batch.samples) == 6 and "CD34" not in batch.channels and "APC-A" in batch.channels
    guava = read_batch([folder / "instruments" / "fcsparser_GuavaMuse_Guava_Muse.fcs"])
    assert len(guava.samples) > 1 and guava.samples[1].stem == "fcsparser_GuavaMuse_Guava_Muse_set2"
