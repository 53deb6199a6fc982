"""Cytometry benchmark: IDEC / VaDE vs k-means and FlowSOM, soft labels, speed, unlabelled real files.

    .venv/bin/python benchmarks/bench_cytometry.py [--data ../shared/data] [--seeds 10] [--threads 2]

Writes benchmarks/results/cytometry.json:
- accuracy on flowsom/ff.fcs against its manual gating (gating_result.csv): Hungarian-matched F1 per
  population and mean (excluding "Unlabeled") and ARI, for IDEC, VaDE, k-means and FlowSOM (the GPL
  ``flowsom`` package, benchmark-only extra; skipped when absent), over several seeds (mean, spread);
- soft labels: samples re-mixed from the gated cells of ff.fcs in known random proportions; only the
  sample fractions are given; cell-level accuracy and proportion MAE on those samples and on unseen ones;
- speed: 20,000-event FCS files assigned per minute with a saved model (read, compensate, transform,
  assign), with and without writing the CSV outputs, and the training time;
- the pipeline on the unlabelled files (cytonorm/, flowspy_time_course/, facs_diva_test.fcs).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from napari_hematology.core.cytometry import (
    ClusterConfig,
    apply_pipeline,
    channel_indices,
    fit_clusterer,
    load_pipeline_config,
    pipeline_config_from_dict,
    proportions_table,
    read_fcs,
    run_pipeline,
    sample_proportions,
    sample_values,
    save_pipeline,
    single_stage_config,
    write_outputs,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cytometry.json"
STAGES = ROOT / "benchmarks" / "cytometry_stages.yaml"
# The lineage markers FlowSOM's own example clusters ff.fcs on (its columns 9, 12, 14-18).
FF_MARKERS = ["CD8", "TCRyd", "TCRb", "NK1/1", "CD4", "CD19", "CD3"]
UNLABELED = "Unlabeled"
SPEED_EVENTS = 20_000


def matched_f1(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Hungarian matching of clusters to populations maximising F1; F1 per population and ARI."""
    populations = sorted(set(truth))
    clusters = sorted(set(predicted))
    f1 = np.zeros((len(populations), len(clusters)))
    for i, population in enumerate(populations):
        is_population = truth == population
        for j, cluster in enumerate(clusters):
            is_cluster = predicted == cluster
            both = np.sum(is_population & is_cluster)
            f1[i, j] = 2 * both / (is_population.sum() + is_cluster.sum())
    rows, columns = linear_sum_assignment(-f1)
    per_population = {populations[r]: float(f1[r, c]) for r, c in zip(rows, columns, strict=False)}
    per_population = {p: per_population.get(p, 0.0) for p in populations if p != UNLABELED}
    labelled = truth != UNLABELED
    return {
        "mean_f1": float(np.mean(list(per_population.values()))),
        "f1": per_population,
        "ari_all_events": float(adjusted_rand_score(truth, predicted)),
        "ari_labelled_events": float(adjusted_rand_score(truth[labelled], predicted[labelled])),
    }


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (max - min, and standard deviation) of the metrics over seeds."""
    summary = {}
    for key in ("mean_f1", "ari_all_events", "ari_labelled_events"):
        values = np.array([r[key] for r in runs])
        summary[key] = {
            "mean": float(values.mean()),
            "spread": float(values.max() - values.min()),
            "std": float(values.std()),
            "per_seed": [round(float(v), 4) for v in values],
        }
    populations = runs[0]["f1"]
    summary["f1_per_population_mean"] = {p: float(np.mean([r["f1"][p] for r in runs])) for p in populations}
    if "seconds" in runs[0]:
        summary["seconds_per_run"] = float(np.mean([r["seconds"] for r in runs]))
    return summary


def ff_data(data: Path) -> tuple[np.ndarray, np.ndarray]:
    sample = read_fcs(data / "cytometry" / "flowsom" / "ff.fcs")
    values = sample.events[:, channel_indices(sample, FF_MARKERS)]
    labels = pd.read_csv(data / "cytometry" / "flowsom" / "gating_result.csv", header=None)[0].to_numpy()
    return values, labels


def accuracy_benchmark(values: np.ndarray, labels: np.ndarray, seeds: int) -> dict:
    """ff.fcs is already compensated and logicle-transformed, so values are used as they are."""
    clusters = len(set(labels))
    results = {"clusters": clusters, "channels": FF_MARKERS, "events": len(values)}
    for method in ("idec", "vade"):
        runs = []
        for seed in range(seeds):
            started = time.perf_counter()
            clusterer = fit_clusterer(
                values, FF_MARKERS, ClusterConfig.from_settings(method=method, clusters=clusters, seed=seed)
            )
            predicted = clusterer.assign(values).argmax(axis=1)
            runs.append({**matched_f1(labels, predicted), "seconds": time.perf_counter() - started})
            print(f"{method} seed {seed}: F1 {runs[-1]['mean_f1']:.3f}", file=sys.stderr)
        results[method] = summarise(runs)
    runs = []
    for seed in range(seeds):
        started = time.perf_counter()
        predicted = KMeans(clusters, n_init=10, random_state=seed).fit_predict(values)
        runs.append({**matched_f1(labels, predicted), "seconds": time.perf_counter() - started})
    results["kmeans"] = summarise(runs)
    results["flowsom"] = flowsom_benchmark(values, labels, clusters, seeds)
    return results


def flowsom_benchmark(values, labels, clusters, seeds) -> dict:
    try:
        import anndata
        import flowsom
    except ImportError:
        return {"skipped": "install the benchmark extra: pip install .[benchmarks]"}
    runs = []
    for seed in range(seeds):
        started = time.perf_counter()
        fsom = flowsom.FlowSOM(
            anndata.AnnData(values.astype(np.float32)),
            cols_to_use=list(range(values.shape[1])),
            n_clusters=clusters,
            xdim=10,
            ydim=10,
            seed=seed,
        )
        predicted = fsom.get_cell_data().obs["metaclustering"].to_numpy()
        runs.append({**matched_f1(labels, predicted), "seconds": time.perf_counter() - started})
    return {**summarise(runs), "settings": "10x10 SOM, consensus metaclustering, same channels and K"}


def remix(values, labels, populations, samples, events, rng):
    """Samples drawn from the gated cells in random (Dirichlet) proportions; cells drawn with replacement."""
    pools = {p: np.flatnonzero(labels == p) for p in populations}
    fractions = rng.dirichlet(np.ones(len(populations)), size=samples)
    rows, truth, ids = [], [], []
    for s, fraction in enumerate(fractions):
        counts = rng.multinomial(events, fraction)
        for k, (population, count) in enumerate(zip(populations, counts, strict=False)):
            rows.append(values[rng.choice(pools[population], count)])
            truth += [k] * count
            ids += [s] * count
        fractions[s] = counts / events
    return np.concatenate(rows), np.asarray(truth), np.asarray(ids), fractions


def soft_label_benchmark(values, labels) -> dict:
    populations = sorted(set(labels) - {UNLABELED})
    rng = np.random.default_rng(0)
    train_x, train_truth, train_ids, train_fractions = remix(values, labels, populations, 16, 3000, rng)
    test_x, test_truth, test_ids, test_fractions = remix(values, labels, populations, 8, 3000, rng)
    results = {
        "populations": populations,
        "train_samples": 16,
        "unseen_samples": 8,
        "events_per_sample": 3000,
    }
    for method in ("idec", "vade"):
        config = ClusterConfig(method=method, clusters=len(populations))
        clusterer = fit_clusterer(
            train_x,
            FF_MARKERS,
            config,
            sample_ids=train_ids,
            reference=train_fractions,
            populations=populations,
        )
        results[method] = {
            "trained_samples": _soft_label_scores(
                clusterer, train_x, train_truth, train_ids, train_fractions
            ),
            "unseen_samples": _soft_label_scores(clusterer, test_x, test_truth, test_ids, test_fractions),
            "train_seconds": clusterer.extra["train_seconds"],
        }
        print(f"soft labels {method}: {results[method]}", file=sys.stderr)
    return results


def _soft_label_scores(clusterer, x, truth, ids, fractions) -> dict:
    """Proportions as ``proportions.csv`` reports them (counts of assigned events), and for comparison
    the mean soft assignment."""
    probabilities = clusterer.assign(x)
    samples = range(len(fractions))
    counted = np.stack([sample_proportions(probabilities[ids == s]) for s in samples])
    soft = np.stack([probabilities[ids == s].mean(axis=0) for s in samples])
    errors, soft_errors = np.abs(counted - fractions) * 100, np.abs(soft - fractions) * 100
    return {
        "cell_accuracy": float(np.mean(probabilities.argmax(axis=1) == truth)),
        "proportion_mae_points": float(errors.mean()),
        "proportion_max_error_points": float(errors.max()),
        "mean_soft_assignment_mae_points": float(soft_errors.mean()),
    }


def speed_benchmark(data: Path, files: int, threads: int) -> dict:
    import flowio
    import torch

    torch.set_num_threads(threads)
    source = read_fcs(data / "cytometry" / "flowsom" / "ff.fcs")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = []
        for i in range(files):
            events = source.events[rng.choice(len(source.events), SPEED_EVENTS)]
            path = folder / f"sample_{i:03d}.fcs"
            with open(path, "wb") as handle:
                flowio.create_fcs(
                    handle, events.astype(np.float32).ravel(), source.names, opt_channel_names=source.markers
                )
            paths.append(path)
        config = single_stage_config(
            clusters=7,
            method="idec",
            channels=FF_MARKERS,
            transform="none",
            compensate=False,
        )
        started = time.perf_counter()
        result = run_pipeline(paths[:1], config)
        train_seconds = time.perf_counter() - started
        save_pipeline(result, folder / "model")
        started = time.perf_counter()
        apply_pipeline(paths, folder / "model")
        assign_seconds = time.perf_counter() - started
        started = time.perf_counter()
        write_outputs(apply_pipeline(paths, folder / "model"), folder / "out")
        with_csv_seconds = time.perf_counter() - started
    return {
        "files": files,
        "events_per_file": SPEED_EVENTS,
        "torch_threads": threads,
        "train_seconds_one_20k_file": train_seconds,
        "samples_per_minute_assign": 60 * files / assign_seconds,
        "samples_per_minute_with_csv_outputs": 60 * files / with_csv_seconds,
    }


def describe_clusters(result, stage_index: int = 0, top: int = 3) -> dict:
    """Per cluster of a stage: share of events and the channels most above the pooled median."""
    stage = result.stages[stage_index]
    channels = stage.clusterers[0].channels
    values, labels = [], []
    for sample, probabilities in zip(result.samples, stage.probabilities, strict=False):
        seen = np.isfinite(probabilities).all(axis=1)
        values.append(sample_values(sample, channels, result.config)[seen])
        labels.append(probabilities[seen].argmax(axis=1))
    values, labels = np.concatenate(values), np.concatenate(labels)
    median, spread = np.median(values, axis=0), values.std(axis=0) + 1e-9
    names = [_marker(result.samples[0], c) for c in channels]
    description = {}
    for k, population in enumerate(stage.stage.population_names):
        members = values[labels == k]
        if not len(members):
            continue
        shift = (np.median(members, axis=0) - median) / spread
        high = [f"{names[i]}+" for i in np.argsort(-shift)[:top] if shift[i] > 0.5]
        description[population] = {"share": round(float(np.mean(labels == k)), 4), "high": high}
    return description


def _marker(sample, channel: str) -> str:
    index = channel_indices(sample, [channel])[0]
    return sample.markers[index] or sample.names[index]


def unlabelled_benchmark(data: Path) -> dict:
    folder = data / "cytometry"
    runs = {
        "cytonorm (mass cytometry, YAML two-stage: IDEC then VaDE)": (
            sorted((folder / "cytonorm").glob("*.fcs")),
            load_pipeline_config(STAGES),
        ),
        "flowspy_time_course (IDEC, 6 clusters)": (
            sorted((folder / "flowspy_time_course").glob("*.fcs")),
            pipeline_config_from_dict(
                {
                    "transform": "arcsinh",
                    "cofactor": 150,
                    "stages": [{"name": "cluster", "method": "idec", "clusters": 6}],
                }
            ),
        ),
        "facs_diva_test (VaDE, 6 clusters)": (
            [folder / "facs_diva_test.fcs"],
            pipeline_config_from_dict(
                {
                    "transform": "arcsinh",
                    "cofactor": 150,
                    "stages": [{"name": "cluster", "method": "vade", "clusters": 6}],
                }
            ),
        ),
    }
    report = {}
    for name, (paths, config) in runs.items():
        started = time.perf_counter()
        result = run_pipeline(paths, config)
        seconds = time.perf_counter() - started
        table = proportions_table(result)
        report[name] = {
            "files": len(paths),
            "events": int(table["events"].sum()),
            "channels": result.config.channels,
            "seconds": seconds,
            "clusters": {s.stage.name: describe_clusters(result, i) for i, s in enumerate(result.stages)},
            "proportions": table.round(4).to_dict(orient="records"),
        }
        print(f"{name}: {seconds:.1f} s", file=sys.stderr)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--speed-files", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    values, labels = ff_data(args.data)
    started = time.perf_counter()
    results = {
        "command": "python benchmarks/bench_cytometry.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch_threads": args.threads},
    }
    sections = {
        "accuracy_ff_fcs": lambda: accuracy_benchmark(values, labels, args.seeds),
        "soft_labels_remixed_ff_fcs": lambda: soft_label_benchmark(values, labels),
        "speed": lambda: speed_benchmark(args.data, args.speed_files, args.threads),
        "unlabelled_files": lambda: unlabelled_benchmark(args.data),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name, section in sections.items():
        results[name] = section()
        results["total_seconds"] = time.perf_counter() - started
        RESULTS.write_text(json.dumps(results, indent=2))  # after every section: partial runs count
    return 0


if __name__ == "__main__":
    sys.exit(main())
