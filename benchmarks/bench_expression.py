"""Expression benchmarks -> benchmarks/results/expression.json (design: benchmarks/README_expression.md).

Run: .venv/bin/python benchmarks/bench_expression.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from napari_hematology.core.expression import (
    ExpressionConfig,
    fit_expression_model,
    labels_of,
    load_expression,
    make_expression_data,
    predict_expression,
)
from napari_hematology.core.expression.preprocessing import RowCollator, fit_preprocessing
from napari_hematology.core.expression.selection import cross_validate_gene_count
from napari_hematology.core.expression.selfsupervised import autoencoder_loss
from napari_hematology.core.registry import create_model
from napari_hematology.core.training import TrainConfig, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "expression"
RESULTS = Path(__file__).resolve().parent / "results" / "expression.json"
ERYTHROID = {"1Ery", "2Ery", "3Ery", "4Ery", "5Ery", "6Ery", "7MEP", "8Mk"}
PROGENITORS = {"6Ery", "7MEP", "9GMP", "10GMP"}


def config(encoder, head, values="counts", epochs=10, n_top_genes=2000, seed=0):
    return ExpressionConfig.from_options(encoder, head, values, n_top_genes, epochs, seed)


def macro_f1(truth, predicted):
    return round(float(f1_score(truth, predicted, average="macro")), 4)


def pca_logistic(train, test, key, values):
    from napari_hematology.core.expression import PreprocessConfig

    prep = fit_preprocessing(train, PreprocessConfig(values=values))
    x_train = np.vstack(list(_batches(train, prep)))
    x_test = np.vstack(list(_batches(test, prep)))
    pca = PCA(n_components=min(50, len(x_train) - 1), random_state=0).fit(x_train)
    clf = LogisticRegression(max_iter=2000, class_weight="balanced")
    clf.fit(pca.transform(x_train), labels_of(train, key))
    return clf.predict(pca.transform(x_test))


def _batches(data, prep):
    from napari_hematology.core.expression.preprocessing import transformed_batches

    return transformed_batches(data, prep)


def golub_data():
    """The 38 training and 34 independent patients of Golub et al. (1999), labelled ALL/AML."""
    actual = pd.read_csv(DATA / "golub" / "actual.csv").set_index("patient")["cancer"]
    parts = []
    for name in ("train", "independent"):
        table = pd.read_csv(DATA / "golub" / f"data_set_ALL_AML_{name}.csv")
        genes = table["Gene Accession Number"].to_numpy()
        samples = [c for c in table.columns if c.isdigit()]
        obs = {"cancer": actual.loc[[int(s) for s in samples]].to_numpy()}
        parts.append(make_expression_data(table[samples].to_numpy().T, genes, samples, obs, name))
    return parts


def golub(seeds=tuple(range(10)), few_seeds=(0, 1, 2)):
    """Train on the 38 training patients, test on the 34 independent ones.

    Recipe = ``expression fit --values intensities --n-top-genes 0 --select-genes auto --head linear
    --seed S``, all fitted on the 38 training patients only: clip to [20, 16000], log2, per-array
    standardisation, per-gene z-score, the K genes of highest ANOVA F between ALL and AML with K chosen by
    2x repeated 5-fold cross-validation (folds seeded by S); 38 patients is a small cohort, so the head
    reads the selected genes (``head_input`` auto). For each seed S the whole recipe, CV included, reruns.
    The other combinations and the latent head reuse the gene count chosen for the same seed.
    """
    train_set, test_set = golub_data()
    truth = labels_of(test_set, "cancer")

    def correct(encoder, head, seed, count, head_input="auto"):
        trial = config(encoder, head, "intensities", 30, n_top_genes=None, seed=seed)
        trial.preprocess.select_genes, trial.head_input = count, head_input
        predicted = predict_expression(fit_expression_model(train_set, "cancer", trial), test_set)
        return int((predicted["predicted"].to_numpy() == truth).sum())

    chosen = {seed: cross_validate_gene_count(
        train_set, "cancer", config("ae", "linear", "intensities", 30, n_top_genes=None, seed=seed))[0]
        for seed in seeds}
    return {
        "test_patients": test_set.n_cells,
        "recipe": "--values intensities --n-top-genes 0 --select-genes auto --head linear --seed S",
        "correct_per_seed": {
            "ae+linear": [correct("ae", "linear", s, chosen[s]) for s in seeds],
            "scarf+linear": [correct("scarf", "linear", s, chosen[s]) for s in few_seeds],
            "ae+ffn": [correct("ae", "ffn", s, chosen[s]) for s in few_seeds],
            "ae+linear, head on the latent": [correct("ae", "linear", s, chosen[s], "latent")
                                             for s in few_seeds],
        },
        "seeds": list(seeds),
        "genes_chosen_by_cv_on_train_per_seed": [chosen[s] for s in seeds],
        "correct_per_seed_without_gene_selection": {
            "ae+linear": [correct("ae", "linear", s, None) for s in few_seeds]},
        "pca+logreg": int((pca_logistic(train_set, test_set, "cancer", "intensities") == truth).sum()),
        "target": ">= 33/34",
    }


def split_benchmark(name, data, key, values, combos, fractions, epochs):
    labels = labels_of(data, key)
    train_rows, test_rows = train_test_split(np.arange(data.n_cells), test_size=0.3, random_state=0,
                                             stratify=labels)
    train_set, test_set = data.subset(train_rows), data.subset(test_rows)
    truth = labels_of(test_set, key)
    out = {"cells": data.n_cells, "classes": len(set(labels)), "split": "70/30 stratified, seed 0",
           "macro_f1": {}}
    for fraction in fractions:
        masked = _keep_fraction(train_set, key, fraction)
        row = {"pca+logreg": macro_f1(truth, pca_logistic(_labelled(masked, key), test_set, key,
                                                         values))}
        for encoder, head in combos:
            started = time.perf_counter()
            model = fit_expression_model(masked, key, config(encoder, head, values, epochs))
            row[f"{encoder}+{head}"] = macro_f1(truth, predict_expression(model, test_set)["predicted"])
            print(name, fraction, encoder, head, row[f"{encoder}+{head}"],
                  f"{time.perf_counter() - started:.0f}s", flush=True)
        out["macro_f1"][f"{int(fraction * 100)}% labels"] = row
    return out


def _keep_fraction(data, key, fraction):
    """Hide all but ``fraction`` of the labels (at least 2 per class); hidden cells still pretrain."""
    masked = data.subset(np.arange(data.n_cells))
    labels = labels_of(masked, key)
    rng = np.random.default_rng(0)
    keep = np.zeros(len(labels), bool)
    for cls in set(labels):
        rows = np.flatnonzero(labels == cls)
        keep[rng.choice(rows, max(2, int(round(fraction * len(rows)))), replace=False)] = True
    masked.obs[key] = np.where(keep, labels, None)
    return masked


def _labelled(data, key):
    return data.subset(labels_of(data, key) != "")


def allsorts_loo():
    counts = pd.read_csv(DATA / "allsorts" / "counts.csv", index_col=0)
    labels = pd.read_csv(DATA / "allsorts" / "labels.csv", header=None, index_col=0)[1]
    data = make_expression_data(counts.to_numpy(), counts.columns, counts.index,
                                {"subtype": labels.loc[counts.index].to_numpy()}, "allsorts")
    truth = labels_of(data, "subtype")
    predicted = {"ae+linear": [], "pca+logreg": []}
    for held_out in range(data.n_cells):
        train_set, test_set = data.subset(np.arange(data.n_cells) != held_out), data.subset([held_out])
        model = fit_expression_model(train_set, "subtype", config("ae", "linear", "counts", 30))
        predicted["ae+linear"].append(predict_expression(model, test_set)["predicted"][0])
        predicted["pca+logreg"].append(pca_logistic(train_set, test_set, "subtype", "counts")[0])
    return {"patients": data.n_cells, "macro_f1": {k: macro_f1(truth, v) for k, v in predicted.items()}}


def zero_shot():
    """paul15: train erythroid-vs-myeloid on progenitor clusters, apply unchanged to mature clusters."""
    data = load_expression(DATA / "paul15.h5ad", "paul15_clusters")
    clusters = labels_of(data, "paul15_clusters")
    lineage = np.where(np.isin(clusters, list(ERYTHROID)), "erythroid", "myeloid")
    data.obs["lineage"] = lineage
    progenitor = np.isin(clusters, list(PROGENITORS))
    mature = ~progenitor & (clusters != "19Lymph")
    source = data.subset(progenitor)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.permutation(data.n_genes)[: int(0.9 * data.n_genes)])
    target = data.subset(mature)
    target = make_expression_data(target.matrix[:, keep][:, ::-1], target.genes[keep][::-1],
                                  target.cells, target.obs, "paul15 mature, 10% genes dropped, reordered")
    out = {"train": f"{source.n_cells} progenitor cells ({', '.join(sorted(PROGENITORS))})",
           "test": f"{target.n_cells} mature cells, 10% of genes removed and columns reversed",
           "macro_f1": {}}
    for encoder, head in (("ae", "ffn"), ("scarf", "linear")):
        model = fit_expression_model(source, "lineage", config(encoder, head, "counts", 15))
        out["macro_f1"][f"{encoder}+{head}"] = macro_f1(
            labels_of(target, "lineage"), predict_expression(model, target)["predicted"])
    out["macro_f1"]["pca+logreg"] = macro_f1(labels_of(target, "lineage"),
                                             pca_logistic(source, target, "lineage", "counts"))
    out["notes"] = target.notes
    return out


def synthetic_counts(n_cells, n_genes, density, chunk=2000):
    """Sparse Poisson-like counts built chunk by chunk (never dense, at most one boolean chunk)."""
    rng = np.random.default_rng(0)
    chunks = []
    for start in range(0, n_cells, chunk):
        rows = sparse.csr_matrix(rng.random((min(chunk, n_cells - start), n_genes), np.float32) < density,
                                 dtype=np.float32)
        rows.data = rng.poisson(2.0, rows.nnz).astype(np.float32) + 1.0
        chunks.append(rows)
    return sparse.vstack(chunks, format="csr")


def throughput(n_cells=50_000, n_genes=20_000, density=0.03, steps=40):
    """AE pretraining speed and peak memory on synthetic sparse counts (never densified at once)."""
    matrix = synthetic_counts(n_cells, n_genes, density)
    nnz = matrix.nnz
    data = make_expression_data(matrix, [f"g{i}" for i in range(n_genes)], name="synthetic")
    from napari_hematology.core.expression import PreprocessConfig

    started = time.perf_counter()
    prep = fit_preprocessing(data, PreprocessConfig(n_top_genes=None))
    preprocessing_s = time.perf_counter() - started
    network = create_model("expression_model", n_genes=n_genes, n_classes=2, hidden=[512], latent=256)
    batch = 128
    subset = np.arange(steps * batch)
    history = train(network, subset, autoencoder_loss,
                    TrainConfig(epochs=1, batch_size=batch, device="cpu"),
                    collate_fn=RowCollator(data, prep))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "cells": n_cells, "genes": n_genes, "nonzeros": nnz, "dense_would_be_gb": round(
            n_cells * n_genes * 4 / 2**30, 1),
        "sparse_matrix_mb": round((matrix.data.nbytes + matrix.indices.nbytes) / 2**20),
        "gene_statistics_pass_s": round(preprocessing_s, 1),
        "ae_training_cells_per_s": round(len(subset) / history.seconds, 1),
        "epoch_of_50k_cells_min": round(n_cells / (len(subset) / history.seconds) / 60, 1),
        "peak_rss_mb": round(peak_mb),
        "threads": 2,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer combinations (about 15 minutes)")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    combos = [("ae", "ffn"), ("vime", "linear"), ("scarf", "gcn"), ("byol", "transformer")]
    if not args.quick:
        combos += [("ae", "linear"), ("ae", "gcn"), ("ae", "transformer"), ("scarf", "ffn")]
    fractions = (0.01, 0.1, 1.0)
    steps = {  # throughput first: its peak memory is the process's, before other steps load data
        "throughput": throughput,
        "golub": golub,
        "zero_shot_paul15": zero_shot,
        "pbmc_10x_top2000": lambda: split_benchmark(
            "pbmc10x", load_expression(DATA / "pbmc_10x_top2000.h5", "Y"), "Y", "counts", combos,
            fractions, 5),
        "paul15": lambda: split_benchmark(
            "paul15", load_expression(DATA / "paul15.h5ad", "paul15_clusters"), "paul15_clusters",
            "counts", combos, fractions, 5),
        "pbmc68k_reduced": lambda: split_benchmark(
            "pbmc68k", load_expression(DATA / "pbmc68k_reduced.h5ad", "bulk_labels"), "bulk_labels",
            "normalized", combos, (1.0,), 10),
        "allsorts_loo": allsorts_loo,
    }
    unknown = set(args.only or []) - set(steps)
    if unknown:
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; choose from {', '.join(steps)}")
    for name, step in steps.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        result = step()
        result["seconds"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(result), flush=True)
        _store(name, result)


def _store(name: str, result: dict) -> None:
    """Update one entry of the results file (re-read first, so separate runs of different steps merge)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[name] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
