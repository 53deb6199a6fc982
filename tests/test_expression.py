"""Expression backend: loading, preprocessing, encoders + heads, save/load, CLI and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.expression import (
    ExpressionConfig,
    PreprocessConfig,
    embed_expression,
    fit_expression_model,
    labels_of,
    load_expression,
    load_expression_model,
    make_expression_data,
    predict_expression,
    save_expression_model,
)
from napari_hematology.core.expression.preprocessing import RowCollator, fit_preprocessing

N_GENES = 60


def synthetic_counts(n_cells: int = 120, n_classes: int = 3, seed: int = 0, sparse_matrix=False):
    """Poisson counts where each class over-expresses its own block of genes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_cells) % n_classes
    rates = np.full((n_cells, N_GENES), 1.0)
    for cls in range(n_classes):
        rates[labels == cls, cls * 10 : cls * 10 + 10] = 20.0
    counts = rng.poisson(rates).astype(np.float32)
    matrix = sparse.csr_matrix(counts) if sparse_matrix else counts
    genes = [f"G{i}" for i in range(N_GENES)]
    obs = {"cell_type": np.array(["A", "B", "C", "D"])[labels]}
    return make_expression_data(matrix, genes, [f"c{i}" for i in range(n_cells)], obs, "synthetic")


def write_csv(data, path) -> None:
    """Write synthetic data as a cells x genes CSV with its ``cell_type`` column."""
    table = pd.DataFrame(data.matrix, columns=data.genes)
    table.insert(0, "cell", data.cells)
    table["cell_type"] = data.obs["cell_type"]
    table.to_csv(path, index=False)


def quick_config(encoder="ae", head="ffn", head_input="latent") -> ExpressionConfig:
    """Small, fast settings; the head reads the latent unless told otherwise (the data sets are small)."""
    config = ExpressionConfig.from_options(encoder, head, n_top_genes=40, pretrain_epochs=5,
                                           head_input=head_input)
    config.hidden, config.latent = (32,), 16
    config.pretraining.batch_size = 32
    config.head_training.epochs, config.head_training.batch_size = 40, 32
    config.graph_training.epochs = 60
    return config


def accuracy(model, data) -> float:
    table = predict_expression(model, data)
    return float((table["predicted"].to_numpy() == labels_of(data, "cell_type")).mean())


@pytest.mark.parametrize(
    ("encoder", "head"), [("ae", "ffn"), ("vime", "linear"), ("scarf", "gcn"), ("byol", "transformer")]
)
def test_every_encoder_and_head_learns_separable_classes(encoder, head):
    train, test = synthetic_counts(seed=0), synthetic_counts(n_cells=60, seed=1)
    model = fit_expression_model(train, "cell_type", quick_config(encoder, head))
    assert model.classes == ["A", "B", "C"]
    assert len(model.history["pretraining_loss"]) == 5
    assert accuracy(model, test) > 0.85  # chance is 0.33


def test_save_load_roundtrip_and_tables(tmp_path):
    data = synthetic_counts(sparse_matrix=True)
    model = fit_expression_model(data, "cell_type", quick_config())
    save_expression_model(model, tmp_path / "model")
    loaded = load_expression_model(tmp_path / "model")
    before, after = predict_expression(model, data), predict_expression(loaded, data)
    assert list(after.columns) == ["cell", "predicted", "prob_A", "prob_B", "prob_C"]
    np.testing.assert_allclose(before["prob_A"], after["prob_A"], atol=1e-5)
    assert np.allclose(after[["prob_A", "prob_B", "prob_C"]].sum(axis=1), 1.0, atol=1e-4)
    embedding = embed_expression(loaded, data)
    assert embedding.shape == (data.n_cells, 17) and embedding.columns[1] == "latent_0"


def test_zero_shot_alignment_with_reordered_and_missing_genes():
    train, test = synthetic_counts(seed=0), synthetic_counts(n_cells=60, seed=2)
    model = fit_expression_model(train, "cell_type", quick_config())
    keep = np.random.default_rng(0).permutation(N_GENES)[: N_GENES - 5]
    shuffled = make_expression_data(test.matrix[:, keep], test.genes[keep], test.cells, test.obs)
    assert accuracy(model, shuffled) > 0.85
    assert any("missing" in note for note in shuffled.notes)


def test_sparse_and_dense_preprocessing_agree_and_batches_are_dense():
    dense, sparse_data = synthetic_counts(), synthetic_counts(sparse_matrix=True)
    config = PreprocessConfig(n_top_genes=30)
    fitted_dense, fitted_sparse = fit_preprocessing(dense, config), fit_preprocessing(sparse_data, config)
    assert fitted_dense.genes == fitted_sparse.genes and len(fitted_dense.genes) == 30
    np.testing.assert_allclose(fitted_dense.mean, fitted_sparse.mean, rtol=1e-4)
    batch = RowCollator(sparse_data, fitted_sparse)([3, 1, 2])
    assert tuple(batch.shape) == (3, 30)
    assert abs(float(batch.mean())) < 3


def test_csv_and_h5_loading(tmp_path):
    table = pd.DataFrame({"cell": ["a", "b", "c"], "GATA1": [1, 0, 3], "MPO": [0, 5, 1],
                          "type": ["x", "y", "x"]})
    table.to_csv(tmp_path / "cells.csv", index=False)
    table.to_csv(tmp_path / "cells.tsv", index=False, sep="\t")
    for name in ("cells.csv", "cells.tsv"):
        data = load_expression(tmp_path / name, label_key="type")
        assert list(data.genes) == ["GATA1", "MPO"] and list(data.cells) == ["a", "b", "c"]
        assert list(labels_of(data, "type")) == ["x", "y", "x"]


def test_pbmc_10x_h5_has_integer_labels(shared_data):
    data = load_expression(shared_data / "expression" / "pbmc_10x_top2000.h5", label_key="Y")
    assert data.matrix.shape == (4271, 2000)
    assert sorted(set(labels_of(data, "Y"))) == [str(i) for i in range(1, 9)]


def test_cli_fit_predict_embed_on_held_out_cells(tmp_path, shared_data):
    import anndata

    from napari_hematology.cli import main

    cells = anndata.read_h5ad(shared_data / "expression" / "pbmc68k_reduced.h5ad")
    order = np.random.default_rng(0).permutation(cells.n_obs)
    train, held_out = tmp_path / "train.h5ad", tmp_path / "held_out.h5ad"
    cells[order[:500]].copy().write_h5ad(train)
    cells[order[500:]].copy().write_h5ad(held_out)
    model_dir, predictions, embedding = tmp_path / "m", tmp_path / "p.csv", tmp_path / "e.csv"
    assert main(["expression", "fit", "--data", str(train), "--label-key", "bulk_labels", "--out",
                 str(model_dir), "--values", "normalized", "--pretrain-epochs", "1", "--head",
                 "linear"]) == 0
    assert main(["expression", "predict", "--model", str(model_dir), "--data", str(held_out), "--out",
                 str(predictions)]) == 0
    assert main(["expression", "embed", "--model", str(model_dir), "--data", str(held_out), "--out",
                 str(embedding)]) == 0
    table = pd.read_csv(predictions)
    assert list(table.columns[:3]) == ["cell", "predicted", "prob_CD14+ Monocyte"]
    assert table.shape == (200, 12) and list(table["cell"]) == list(cells.obs_names[order[500:]])
    truth = cells.obs["bulk_labels"].astype(str).to_numpy()[order[500:]]
    assert (table["predicted"].to_numpy() == truth).mean() > 0.6  # the largest class is 0.34
    assert pd.read_csv(embedding).shape == (200, 257)


# --- bad input -------------------------------------------------------------------------------------

def test_missing_label_column_names_the_available_ones():
    with pytest.raises(InputError, match="no label column 'celltype'.*cell_type"):
        fit_expression_model(synthetic_counts(), "celltype", quick_config())


def test_one_class_is_refused():
    data = synthetic_counts()
    data.obs["cell_type"] = "A"
    with pytest.raises(InputError, match="only the class 'A'.*at least two classes"):
        fit_expression_model(data, "cell_type", quick_config())


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN"), (-3.0, "negative value")])
def test_nan_and_negative_counts_are_refused(value, message):
    data = synthetic_counts()
    data.matrix[5, 7] = value
    with pytest.raises(InputError, match=message):
        fit_expression_model(data, "cell_type", quick_config())


def test_negative_values_are_fine_when_declared_normalized():
    data = synthetic_counts()
    data.matrix[5, 7] = -3.0
    config = quick_config()
    config.preprocess.values = "normalized"
    assert fit_expression_model(data, "cell_type", config).classes == ["A", "B", "C"]


def test_mismatched_genes_are_refused(tmp_path):
    model = fit_expression_model(synthetic_counts(), "cell_type", quick_config())
    other = make_expression_data(np.ones((4, 5)), [f"X{i}" for i in range(5)], name="other.h5ad")
    with pytest.raises(InputError, match="only 0 of the model's 40 genes"):
        predict_expression(model, other)


def test_damaged_expression_files_give_one_clear_error_and_a_bug_is_not_hidden(tmp_path, monkeypatch):
    import anndata
    import h5py

    anndata.AnnData(np.arange(40, dtype=np.float32).reshape(8, 5)).write_h5ad(tmp_path / "good.h5ad")
    whole = (tmp_path / "good.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut.h5ad: cannot be read \(OSError: .*truncated file"):
        load_expression(tmp_path / "cut.h5ad")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError, match=r"binary.csv: cannot be read \(UnicodeDecodeError"):
        load_expression(tmp_path / "binary.csv")
    with h5py.File(tmp_path / "words.h5", "w") as handle:
        handle["X"] = np.array([[b"a", b"b"]] * 3)
    with pytest.raises(InputError, match="words.h5: the expression matrix is not numeric"):
        load_expression(tmp_path / "words.h5")

    def bug(*args, **kwargs):
        raise AttributeError("a bug, not a damaged file")

    monkeypatch.setattr(anndata, "read_h5ad", bug)
    with pytest.raises(AttributeError, match="a bug"):
        load_expression(tmp_path / "good.h5ad")


def test_bad_files_and_options(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_expression(tmp_path / "absent.h5ad")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(InputError, match="unsupported format"):
        load_expression(tmp_path / "x.txt")
    (tmp_path / "broken.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cannot be read"):
        load_expression(tmp_path / "broken.h5ad")
    with pytest.raises(InputError, match="Unknown head 'svm'"):
        ExpressionConfig.from_options(head="svm")
    with pytest.raises(InputError, match="Unknown head input 'pixels'"):
        ExpressionConfig.from_options(head_input="pixels")
    with pytest.raises(InputError, match="gcn head reads the latent only"):
        ExpressionConfig.from_options(head="gcn", head_input="genes")
    with pytest.raises(ModelFileError):
        load_expression_model(tmp_path)


def test_latent_map_has_coordinates_features_and_confusion():
    from napari_hematology.core.expression.maps import fit_and_map, latent_map

    data = synthetic_counts()
    model, view = fit_and_map(data, "cell_type", quick_config())
    assert view.coordinates.shape == (data.n_cells, 2)
    assert {"cell", "label", "predicted", "confidence", "prob_A"} <= set(view.features.columns)
    assert view.confusion.shape == (3, 3) and int(view.confusion.to_numpy().sum()) == data.n_cells // 5
    held_out = latent_map(model, synthetic_counts(n_cells=60, seed=1), "cell_type")
    assert int(held_out.confusion.to_numpy().sum()) == 60
    assert np.trace(held_out.confusion.to_numpy()) > 0.9 * 60


# --- supervised gene selection -----------------------------------------------------------------------

def test_gene_selection_keeps_class_genes_with_sklearn_f_statistic():
    from sklearn.feature_selection import f_classif

    from napari_hematology.core.expression.preprocessing import GeneStatistics, normalise_rows

    data = synthetic_counts(sparse_matrix=True)
    labels = labels_of(data, "cell_type")
    config = PreprocessConfig(n_top_genes=None, select_genes=12)
    fitted = fit_preprocessing(data, config, labels)
    assert len(fitted.genes) == 12 and all(int(gene[1:]) < 30 for gene in fitted.genes)
    normalised = normalise_rows(data.matrix, config).toarray()
    statistics = GeneStatistics(data.n_genes, 3)
    statistics.add(normalised, np.searchsorted(["A", "B", "C"], labels))
    expected = np.nan_to_num(f_classif(normalised, labels)[0])
    np.testing.assert_allclose(statistics.f_statistic(np.arange(3)), expected, rtol=1e-3, atol=1e-3)


def test_cross_validated_gene_count_picks_a_candidate():
    from napari_hematology.core.expression.selection import cross_validate_gene_count

    count, scores = cross_validate_gene_count(synthetic_counts(), "cell_type", quick_config(), (3, 30),
                                              folds=2)
    assert set(scores) == {3, 30} and count in scores
    assert scores[count] == max(scores.values()) > 0.8


def test_cli_select_genes(tmp_path):
    from napari_hematology.cli import main

    write_csv(synthetic_counts(), tmp_path / "cells.csv")
    common = ["expression", "fit", "--data", str(tmp_path / "cells.csv"), "--label-key", "cell_type",
              "--pretrain-epochs", "1", "--head", "linear"]
    assert main([*common, "--out", str(tmp_path / "m"), "--select-genes", "6"]) == 0
    assert len(load_expression_model(tmp_path / "m").preprocessor.genes) == 6
    assert main([*common, "--out", str(tmp_path / "bad"), "--select-genes", "0"]) == 2


def test_gene_selection_without_labels_is_refused():
    with pytest.raises(InputError, match="needs class labels"):
        fit_preprocessing(synthetic_counts(), PreprocessConfig(select_genes=5))


# --- small cohorts: the head reads the genes ------------------------------------------------------------

def test_small_cohort_head_reads_genes_and_does_not_depend_on_the_seed(tmp_path):
    data = synthetic_counts(n_cells=60)
    probabilities = []
    for seed in (0, 1):
        config = ExpressionConfig.from_options("ae", "linear", n_top_genes=40, pretrain_epochs=2, seed=seed)
        config.hidden, config.latent = (32,), 16
        config.gene_head_training.epochs = 300
        model = fit_expression_model(data, "cell_type", config)
        assert model.network.head_input == "genes"
        probabilities.append(predict_expression(model, data)[["prob_A", "prob_B", "prob_C"]].to_numpy())
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=2e-3)
    assert accuracy(model, synthetic_counts(n_cells=60, seed=3)) > 0.9
    save_expression_model(model, tmp_path / "genes_head")
    loaded = load_expression_model(tmp_path / "genes_head")
    assert loaded.network.head_input == "genes"
    np.testing.assert_allclose(predict_expression(loaded, data)[["prob_A", "prob_B", "prob_C"]].to_numpy(),
                               probabilities[1], atol=1e-5)
    assert embed_expression(loaded, data).shape == (60, 17)


def head_and_input(config: ExpressionConfig, n_cells: int, n_labelled: int) -> tuple[str, str]:
    resolved = config.resolved(n_cells, n_labelled)
    return resolved.head, resolved.head_input


def test_auto_head_input_depends_on_cohort_size_and_head():
    config = ExpressionConfig.from_options("ae", "ffn")
    assert head_and_input(config, 38, 38) == ("ffn", "genes")
    assert head_and_input(config, 5000, 5000) == ("ffn", "latent")
    assert head_and_input(ExpressionConfig.from_options("ae", "gcn"), 38, 38) == ("gcn", "latent")
    assert head_and_input(ExpressionConfig.from_options(head_input="latent"), 38, 38) == ("linear", "latent")


def test_auto_head_is_linear_for_few_labelled_cells_and_ffn_otherwise():
    config = ExpressionConfig.from_options()
    assert config.head == "auto" and ExpressionConfig().head == "auto"
    assert head_and_input(config, 38, 38) == ("linear", "genes")
    assert head_and_input(config, 199, 199) == ("linear", "genes")
    assert head_and_input(config, 200, 200) == ("ffn", "latent")
    assert head_and_input(config, 5000, 50) == ("linear", "latent")  # few labels, many cells
    assert config.head == "auto" and config.head_input == "auto"  # resolving returns a copy
    for head in ("ffn", "transformer", "gcn", "linear"):
        assert head_and_input(ExpressionConfig.from_options(head=head), 38, 38)[0] == head


@pytest.mark.parametrize(
    ("n_cells", "head_option", "head", "head_input"),
    [(60, [], "linear", "genes"), (240, [], "ffn", "latent"), (60, ["--head", "ffn"], "ffn", "genes"),
     (240, ["--head", "linear"], "linear", "latent")],
)
def test_cli_default_head_depends_on_cohort_size_and_is_saved_resolved(
    tmp_path, n_cells, head_option, head, head_input
):
    import json

    from napari_hematology.cli import main

    write_csv(synthetic_counts(n_cells=n_cells), tmp_path / "cells.csv")
    model_dir = tmp_path / "m"
    assert main(["expression", "fit", "--data", str(tmp_path / "cells.csv"), "--label-key", "cell_type",
                 "--out", str(model_dir), "--pretrain-epochs", "1", *head_option]) == 0
    saved = json.loads((model_dir / "config.json").read_text())["config"]
    assert (saved["head"], saved["head_input"]) == (head, head_input)
    loaded = load_expression_model(model_dir)
    assert (loaded.network.head_kind, loaded.network.head_input) == (head, head_input)
    write_csv(synthetic_counts(n_cells=n_cells, seed=1), tmp_path / "held_out.csv")
    assert main(["expression", "predict", "--model", str(model_dir), "--data", str(tmp_path / "held_out.csv"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert (predictions["predicted"] == np.array(["A", "B", "C"])[np.arange(n_cells) % 3]).mean() > 0.9


def test_arrays_are_standardised_so_a_scaled_array_gives_the_same_inputs():
    rng = np.random.default_rng(0)
    intensities = rng.uniform(100, 5000, size=(6, 50))
    intensities[5] = intensities[0] * 2.0  # the same sample measured on a twice-as-bright array
    data = make_expression_data(intensities, [f"G{i}" for i in range(50)], name="arrays")
    config = PreprocessConfig(values="intensities", n_top_genes=None)
    batch = RowCollator(data, fit_preprocessing(data, config))(list(range(6)))
    np.testing.assert_allclose(batch[0], batch[5], atol=1e-4)
    unstandardised = PreprocessConfig(values="intensities", n_top_genes=None, standardise_arrays=False)
    batch = RowCollator(data, fit_preprocessing(data, unstandardised))(list(range(6)))
    assert float((batch[0] - batch[5]).abs().max()) > 0.1


def test_golub_independent_patients_with_the_small_cohort_recipe(shared_data):
    folder = shared_data / "expression" / "golub"
    actual = pd.read_csv(folder / "actual.csv").set_index("patient")["cancer"]
    parts = []
    for name in ("train", "independent"):
        table = pd.read_csv(folder / f"data_set_ALL_AML_{name}.csv")
        samples = [column for column in table.columns if column.isdigit()]
        obs = {"cancer": actual.loc[[int(s) for s in samples]].to_numpy()}
        parts.append(make_expression_data(table[samples].to_numpy().T, table["Gene Accession Number"],
                                          samples, obs, name))
    config = ExpressionConfig.from_options("ae", "linear", "intensities", 0, pretrain_epochs=0,
                                           select_genes=50)
    model = fit_expression_model(parts[0], "cancer", config)
    predicted = predict_expression(model, parts[1])["predicted"].to_numpy()
    assert int((predicted == labels_of(parts[1], "cancer")).sum()) >= 33  # of 34
