"""Any-lab benchmark of the cell classifier: leave one source (lab) out, test on it.

    .venv/bin/python benchmarks/bench_any_lab.py --stage choose    # candidates on the validation source
    .venv/bin/python benchmarks/bench_any_lab.py --stage report --recipe strong   # the other sources
    .venv/bin/python benchmarks/bench_any_lab.py --stage baseline  # the shipped weights
    .venv/bin/python benchmarks/bench_any_lab.py --stage calibrate # temperature across left-out sources
    .venv/bin/python benchmarks/bench_any_lab.py --stage adapt --models-out DIR  # classify --adapt

Protocol (writes benchmarks/results/any_lab.json, each stage merged into what is there):

- Every run trains on all sources but one and predicts the left-out source. The sources are ``pbc``,
  ``bccd_crops``, ``wbc_seg/dataset1`` and ``wbc_seg/dataset2`` (type labels) and ``all_idb2`` (blast
  vs normal; its normal cells give the false-blast rate).
- Blasts only come from ALL-IDB2, so ALL-IDB2 is split into 5 folds (stratified; each crop its own
  group, the files name no patient) and every run also leaves one ALL-IDB2 fold out: fold 0 with
  ``wbc_seg/dataset2``, 1 with ``pbc``, 2 with ``bccd_crops``, 3 with ``wbc_seg/dataset1``, 4 with nothing
  else. Pooled, the five runs give grouped cross-validation of blast vs normal in which every fold's
  model was trained on all other sources but (for folds 0-3) one.
- Recipe settings are chosen on ONE source (``--validation-source``, default ``wbc_seg/dataset2``):
  ``--stage choose`` trains every candidate with that source left out and keeps the best balanced type
  accuracy there, among these and the recipes already run on it in the same results file (same
  schedule). The figures of the other sources are then measured once, with the chosen candidate.
- Type accuracy counts the classes the training sources also teach (PBC's immature granulocytes,
  erythroblasts and platelets only where PBC is in training): ``balanced_accuracy`` scores the label
  the user sees (argmax over every class, so a neutrophil called ``other`` is wrong);
  ``balanced_accuracy_among_types`` the best of the five normal types (as benchmarks/bench_classifier.py).
- ``--stage calibrate`` fits the temperature on the left-out predictions of all sources but one and
  scores it on that one (expected calibration error and log-loss before and after), for each source.
- ``--stage adapt`` re-measures the saved left-out models (``--models-out``) after re-estimating their
  BatchNorm statistics on the left-out source's crops, as ``classify --adapt`` does (no labels), and
  measures their atypical scores with a reference fitted on each run's training crops.
- ``--stage baseline`` scores the shipped weights on every source; only sources they were not trained
  on (``pbc`` for the weights trained on ALL-IDB2, BCCD and wbc_seg) are an unseen-source test.

The schedule is reduced to fit a shared 2-core machine (``--epochs``, ``--cap``): say so with the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from napari_hematology.core.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from napari_hematology.core.cells.classes import BLAST, NORMAL_TYPES, OTHER
from napari_hematology.core.cells.classifier import CellClassifier, adapt_batch_norm, load_classifier
from napari_hematology.core.cells.recipe import ClassifierRecipe, save_classifier, train_classifier
from napari_hematology.core.cells.training_data import (
    NORMAL,
    SHIFTED_MARK,
    SYNTHETIC,
    CellSet,
    cap_per_label,
    load_cell_set,
    synthetic_cell_set,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "any_lab.json"
ALL_IDB2 = "all_idb2"
BLAST_FOLDS = 5
LEFT_OUT_WITH_FOLD = {"wbc_seg/dataset2": 0, "pbc": 1, "bccd_crops": 2, "wbc_seg/dataset1": 3, "": 4}
CANDIDATES = {
    "mild": {"stain_jitter": 1.0, "scale_jitter": 0.1, "max_blur": 0.0},
    "mild_unshifted": {"stain_jitter": 1.0, "scale_jitter": 0.1, "max_blur": 0.0, "shifted_copies": 0},
    "strong": {"stain_jitter": 3.0, "scale_jitter": 0.25, "max_blur": 1.0},
    "no_colour_statistics": {"colour_statistics": False},
    "mild_low_resolution": {"max_downsample": 3.0, "max_blur": 0.5},
    "shape_first": {"colour_statistics": False, "per_crop_norm": True, "grayscale_probability": 0.3,
                    "stain_jitter": 2.0, "max_blur": 0.5, "max_downsample": 3.0},
}
TYPE_TARGET = 0.85
FALSE_BLAST_TARGET = 0.03


def log_steps(done: int, total: int, message: str = "") -> None:
    """Print about ten lines per training, for runs in the background."""
    if total and done % max(1, total // 10) == 0:
        print(f"{time.strftime('%H:%M:%S')} step {done}/{total} {message}", file=sys.stderr, flush=True)


def all_crops(data: Path, recipe: ClassifierRecipe, cache: Path | None) -> CellSet:
    """Every labelled crop of every source (no cap, no synthetic crops), read once and cached."""
    if cache is not None and cache.is_file():
        stored = np.load(cache, allow_pickle=True)
        return CellSet(**{name: stored[name] for name in stored.files})
    cells = load_cell_set(data, replace(recipe, per_label_cap=0, background_crops=0))
    if cache is not None:
        np.savez(cache, **vars(cells))
    return cells


def blast_fold_of(cells: CellSet, seed: int) -> np.ndarray:
    """ALL-IDB2 fold (0..4) of every crop; -1 for crops of other sources."""
    folds = np.full(len(cells), -1)
    index = np.flatnonzero(cells.sources == ALL_IDB2)
    splitter = StratifiedGroupKFold(n_splits=BLAST_FOLDS, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(index, cells.labels[index], cells.groups[index])):
        folds[index[test]] = fold
    return folds


def held_out(cells: CellSet, folds: np.ndarray, left_out: str) -> np.ndarray:
    """Crops of ``left_out`` and of its paired ALL-IDB2 fold (shifted copies included)."""
    return (cells.sources == left_out) | (folds == LEFT_OUT_WITH_FOLD[left_out])


def shifted(cells: CellSet) -> np.ndarray:
    """Which crops are shifted copies (training augmentation), not crops as the lab made them."""
    return np.array([SHIFTED_MARK in str(name) for name in cells.files], dtype=bool)


def training_set(cells: CellSet, folds: np.ndarray, left_out: str, recipe: ClassifierRecipe) -> CellSet:
    """The run's training crops: the others (and their shifted copies if the recipe has them), capped per
    source and label, plus synthetic crops."""
    excluded = held_out(cells, folds, left_out) | (shifted(cells) if recipe.shifted_copies == 0 else False)
    kept = cells.subset(~excluded)
    table = pd.DataFrame({"label": kept.labels, "source": kept.sources})
    chosen = cap_per_label(table.reset_index(), recipe.per_label_cap, recipe.train.seed)["index"]
    return kept.subset(chosen.to_numpy()).concat(
        synthetic_cell_set(recipe.background_crops, recipe.crop_size, recipe.train.seed))


def run_left_out(
    cells: CellSet, folds: np.ndarray, left_out: str, recipe: ClassifierRecipe, models_out: Path | None
) -> pd.DataFrame:
    """Train without ``left_out`` and its paired ALL-IDB2 fold; predict both; save the model if asked."""
    training = training_set(cells, folds, left_out, recipe)
    print(f"{time.strftime('%H:%M:%S')} left out {left_out or '-'}: {len(training)} training crops",
          file=sys.stderr, flush=True)
    classifier = train_classifier(training, recipe, progress=log_steps)
    if models_out is not None:
        save_classifier(classifier, models_out / model_folder_name(left_out),
                        {"left_out_source": left_out, "left_out_all_idb2_fold": LEFT_OUT_WITH_FOLD[left_out]})
    held = held_out(cells, folds, left_out) & ~shifted(cells)
    return predictions(classifier, cells.subset(held), folds[held], left_out)


def atypical_of_saved(cells: CellSet, folds: np.ndarray, models: Path, recipe: ClassifierRecipe) -> dict:
    """Atypical figures of saved left-out models, the reference fitted on the run's training crops.

    For model folders written before training fitted the reference itself; synthetic crops left out.
    """
    result = {}
    for left_out in LEFT_OUT_WITH_FOLD:
        folder = models / model_folder_name(left_out)
        if not left_out or not folder.is_dir():
            continue
        training = training_set(cells, folds, left_out, recipe)
        real = training.crops[training.sources != SYNTHETIC]
        classifier = load_classifier(folder, "cpu").with_reference(real)
        chosen = (cells.sources == left_out) & ~shifted(cells)
        rows = predictions(classifier, cells.subset(chosen), np.full(chosen.sum(), -1), left_out)
        result[left_out] = atypical_metrics(rows, taught_by(cells, left_out))
    return result


def model_folder_name(left_out: str) -> str:
    """Model folder of the run without ``left_out`` (``wbc_seg/dataset1``: ``without_wbc_seg_dataset1``)."""
    return "without_" + (left_out.replace("/", "_") or "none")


def predictions(classifier: CellClassifier, cells: CellSet, folds: np.ndarray, run: str) -> pd.DataFrame:
    """The classifier's table for ``cells`` with truth, source, ALL-IDB2 fold and run name."""
    table = classifier.predict_prepared(cells.crops)
    for name in ("prob_" + cls for cls in NORMAL_TYPES):
        table[name] = table.get(name, 0.0)
    table.insert(0, "blast_fold", folds)
    table.insert(0, "truth", cells.labels)
    table.insert(0, "source", cells.sources)
    table.insert(0, "file", cells.files)
    table.insert(0, "run", run)
    return table


def type_metrics(rows: pd.DataFrame, taught: set[str]) -> dict:
    """Balanced type accuracy over the taught classes, false-blast rate, what untaught classes became."""
    scored = rows[rows["truth"].isin(taught)]
    type_probabilities = scored[[f"prob_{n}" for n in NORMAL_TYPES]].apply(pd.to_numeric, errors="coerce")
    best_type = np.asarray(NORMAL_TYPES)[type_probabilities.fillna(0.0).to_numpy().argmax(1)]
    recall = {name: round(float((group["label"] == name).mean()), 4)
              for name, group in scored.groupby("truth")}
    among_types = {name: float((best_type[(scored["truth"] == name).to_numpy()] == name).mean())
                   for name in recall}
    not_blast = rows[rows["truth"] != BLAST]
    normal_types = rows[rows["truth"].isin(NORMAL_TYPES)]
    untaught = rows[~rows["truth"].isin(taught)]
    return {
        **atypical_metrics(rows, taught),
        "n": len(rows),
        "classes_scored": sorted(recall),
        "balanced_accuracy": round(float(np.mean(list(recall.values()))), 4),
        "recall_per_class": recall,
        "balanced_accuracy_among_types": round(float(np.mean(list(among_types.values()))), 4),
        "called_blast": round(float((not_blast["label"] == BLAST).mean()), 4),
        "normal_types_called_blast": round(float((normal_types["label"] == BLAST).mean()), 4),
        "called_other": round(float((scored["label"] == OTHER).mean()), 4),
        "confusion": {name: group["label"].value_counts().to_dict()
                      for name, group in scored.groupby("truth")},
        "untaught_called_as": {name: group["label"].value_counts().to_dict()
                               for name, group in untaught.groupby("truth")},
    }


def atypical_metrics(rows: pd.DataFrame, taught: set[str]) -> dict:
    """Atypical scores of a left-out source: mean, share over 0.95, how well they flag untaught classes."""
    scores = pd.to_numeric(rows["atypical_score"], errors="coerce").to_numpy(dtype=float)
    untaught = ~rows["truth"].isin(taught).to_numpy()
    result = {"atypical_mean": round(float(np.nanmean(scores)), 4),
              "atypical_share_over_0.95": round(float(np.mean(scores > 0.95)), 4)}
    if untaught.any() and not untaught.all():
        result["atypical_auroc_untaught_vs_taught"] = round(float(roc_auc_score(untaught, scores)), 4)
    return result


def blast_metrics(rows: pd.DataFrame) -> dict:
    """Blast vs normal on ALL-IDB2 crops: accuracy, ROC AUC, normal cells called blast, per fold."""
    truth = (rows["truth"] == BLAST).to_numpy()
    predicted = (rows["label"] == BLAST).to_numpy()
    return {
        "n": len(rows),
        "accuracy": round(float((truth == predicted).mean()), 4),
        "accuracy_per_fold": {
            int(fold): round(float((g["label"].eq(BLAST) == g["truth"].eq(BLAST)).mean()), 4)
            for fold, g in rows.groupby("blast_fold")},
        "roc_auc": round(float(roc_auc_score(truth, pd.to_numeric(rows["blast_probability"], errors="coerce")
                                             .fillna(0.0))), 4),
        "normal_called_blast": round(float(predicted[~truth].mean()), 4),
        "blast_called_blast": round(float(predicted[truth].mean()), 4),
    }


def taught_by(cells: CellSet, left_out: str) -> set[str]:
    """Classes that the sources other than ``left_out`` teach by a definite label."""
    others = cells.labels[(cells.sources != left_out) & (cells.sources != SYNTHETIC)]
    return set(others) - {NORMAL}


def summarise(predicted: pd.DataFrame, cells: CellSet) -> dict:
    """Per left-out source type metrics and pooled ALL-IDB2 blast metrics of one recipe's runs."""
    summary: dict = {"left_out": {}}
    for left_out in LEFT_OUT_WITH_FOLD:
        rows = predicted[(predicted["run"] == left_out) & (predicted["source"] == left_out)]
        if left_out and len(rows):
            summary["left_out"][left_out] = type_metrics(rows, taught_by(cells, left_out))
    blast_rows = predicted[predicted["source"] == ALL_IDB2]
    if len(blast_rows):
        summary["all_idb2_blast_vs_normal"] = blast_metrics(blast_rows)
        folds_run = sorted(int(fold) for fold in blast_rows["blast_fold"].unique())
        summary["all_idb2_blast_vs_normal"]["folds_run"] = folds_run
    return summary


def calibration(rows: pd.DataFrame, cells: CellSet) -> dict:
    """Temperature scaling measured across left-out sources: fitted on the others, scored on each.

    Rows are one recipe's predictions of left-out crops with a definite label that their run's
    training taught. Softmax of log-probabilities over a temperature equals softmax of the logits over
    it, so the stored probabilities suffice. ``temperature_all_sources`` is the one the shipped model
    takes (fitted on every left-out source's crops).
    """
    classes = [name[len("prob_"):] for name in rows.columns if name.startswith("prob_")]
    keep = [truth in taught_by(cells, run) and truth in classes
            for truth, run in zip(rows["truth"], rows["run"], strict=True)]
    probabilities = rows[[f"prob_{name}" for name in classes]].apply(pd.to_numeric, errors="coerce")
    kept = np.asarray(keep) & probabilities.notna().all(axis=1).to_numpy()
    rows, probabilities = rows[kept], probabilities[kept]
    log_p = np.log(probabilities.to_numpy(dtype=np.float64) + 1e-12)
    targets = np.array([classes.index(truth) for truth in rows["truth"]])
    group = np.where(rows["source"] == ALL_IDB2, ALL_IDB2, rows["run"])
    result: dict = {"temperature_all_sources": round(fit_temperature(log_p, targets), 3), "per_source": {}}
    for name in sorted(set(group)):
        held = group == name
        temperature = fit_temperature(log_p[~held], targets[~held])
        before, after = softmax(log_p[held]), softmax(log_p[held], temperature)
        result["per_source"][name] = {
            "n": int(held.sum()),
            "temperature_from_other_sources": round(temperature, 3),
            "ece_before": round(expected_calibration_error(before, targets[held]), 4),
            "ece_after": round(expected_calibration_error(after, targets[held]), 4),
            "nll_before": round(negative_log_likelihood(before, targets[held]), 4),
            "nll_after": round(negative_log_likelihood(after, targets[held]), 4),
        }
    return result


def summaries(stored: pd.DataFrame, cells: CellSet) -> dict:
    """One summary per recipe found in the stored predictions."""
    return {name: summarise(stored[stored["recipe"] == name], cells) for name in stored["recipe"].unique()}


def replace_runs(stored: pd.DataFrame | None, fresh: pd.DataFrame) -> pd.DataFrame:
    """Stored predictions with those of the recipes and runs in ``fresh`` replaced by ``fresh``."""
    if stored is None:
        return fresh
    done = set(zip(fresh["recipe"], fresh["run"], strict=True))
    kept = stored[[pair not in done for pair in zip(stored["recipe"], stored["run"], strict=True)]]
    return pd.concat([kept, fresh], ignore_index=True)


def merge_runs(stored: pd.DataFrame | None, result: dict, others: list[Path]) -> pd.DataFrame:
    """Join the runs (predictions, recipes, timings) of other result files into this one."""
    for other in others:
        fresh = pd.read_csv(other.with_suffix(".predictions.csv"), keep_default_na=False)
        stored = replace_runs(stored, fresh)
        extra = json.loads(other.read_text())
        result.setdefault("recipes", {}).update(extra.get("recipes", {}))
        result.setdefault("run_seconds", {}).update(extra.get("run_seconds", {}))
    return stored


def adapted(cells: CellSet, models: Path) -> dict:
    """Each saved left-out model with its BatchNorm statistics re-estimated on its left-out source's crops.

    This is ``classify --adapt`` on a folder of that lab's crops: no label is used.
    """
    result = {}
    for left_out in LEFT_OUT_WITH_FOLD:
        folder = models / model_folder_name(left_out)
        if not left_out or not folder.is_dir():
            continue
        classifier = load_classifier(folder, "cpu")
        chosen = (cells.sources == left_out) & ~shifted(cells)
        adapt_batch_norm(classifier.model, cells.crops[chosen])
        rows = predictions(classifier, cells.subset(chosen), np.full(chosen.sum(), -1), left_out)
        metrics = type_metrics(rows, taught_by(cells, left_out))
        result[left_out] = {key: metrics[key] for key in (
            "n", "balanced_accuracy", "balanced_accuracy_among_types", "normal_types_called_blast",
            "recall_per_class")}
    return result


def baseline(cells: CellSet, model_dir: Path | None) -> dict:
    """Shipped (or given) weights on every source; which sources it was trained on is in its metadata."""
    classifier = load_classifier(model_dir)
    trained_on = sorted(classifier.metadata.get("training_crops", {}))
    result = {"model": str(model_dir or "shipped"), "trained_on": trained_on, "sources": {}}
    for source in sorted(set(cells.sources) - {ALL_IDB2}):
        chosen = (cells.sources == source) & ~shifted(cells)
        rows = predictions(classifier, cells.subset(chosen), np.full(chosen.sum(), -1), "")
        taught = set(classifier.classes) & set(rows["truth"])
        metrics = type_metrics(rows, taught)
        metrics["unseen_source"] = source.split("/")[0] not in trained_on
        result["sources"][source] = metrics
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--stage", choices=("choose", "report", "baseline", "merge", "calibrate", "adapt"),
                        required=True)
    parser.add_argument("--validation-source", default="wbc_seg/dataset2")
    parser.add_argument("--recipe", default=None, help="candidate for --stage report (default: chosen)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--sources", nargs="+", default=None, help="left-out sources for --stage report")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--cap", type=int, default=250, help="most training crops per source and label")
    parser.add_argument("--background-crops", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="weights for --stage baseline")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/any_lab_crops_shifted.npz"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--models-out", type=Path, default=None,
                        help="save each run's model as DIR/<recipe>/without_<source> (bench_adaptation.py)")
    parser.add_argument("--merge", nargs="*", type=Path, default=[],
                        help="for --stage merge: other JSON files whose runs join this one's")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    base = ClassifierRecipe(per_label_cap=args.cap, background_crops=args.background_crops)
    base.train = replace(base.train, epochs=args.epochs)
    cells = all_crops(args.data, base, args.cache)
    folds = blast_fold_of(cells, base.train.seed)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads}
    result["validation_source"] = args.validation_source
    predictions_file = args.out.with_suffix(".predictions.csv")
    stored = pd.read_csv(predictions_file, keep_default_na=False) if predictions_file.is_file() else None

    if args.stage == "baseline":
        result["baseline"] = baseline(cells, args.model)
    elif args.stage == "adapt":
        name = args.recipe or result["chosen"]
        result.setdefault("adapted_batch_norm", {})[name] = adapted(cells, args.models_out / name)
        result.setdefault("atypical_refitted", {})[name] = atypical_of_saved(
            cells, folds, args.models_out / name, replace(base, **CANDIDATES[name]))
    elif args.stage == "calibrate":
        name = args.recipe or result["chosen"]
        result["calibration"] = {name: calibration(stored[stored["recipe"] == name], cells)}
    elif args.stage == "merge":
        stored = merge_runs(stored, result, args.merge)
        stored.to_csv(predictions_file, index=False)
        result["summary"] = summaries(stored, cells)
    else:
        names = args.candidates if args.stage == "choose" else [args.recipe or result["chosen"]]
        left_outs = [args.validation_source] if args.stage == "choose" else (
            args.sources or [s for s in LEFT_OUT_WITH_FOLD if s != args.validation_source])
        new = []
        for name in names:
            recipe = replace(base, **CANDIDATES[name])
            result.setdefault("recipes", {})[name] = asdict(recipe)
            for left_out in left_outs:
                started = time.perf_counter()
                models_out = args.models_out / name if args.models_out else None
                table = run_left_out(cells, folds, left_out, recipe, models_out)
                table["recipe"] = name
                new.append(table)
                seconds = round(time.perf_counter() - started, 1)
                result.setdefault("run_seconds", {})[f"{name}:{left_out or 'none'}"] = seconds
        stored = replace_runs(stored, pd.concat(new, ignore_index=True))
        stored.to_csv(predictions_file, index=False)
        result["summary"] = summaries(stored, cells)
        if args.stage == "choose":
            scores = {name: summary["left_out"][args.validation_source]["balanced_accuracy"]
                      for name, summary in result["summary"].items()
                      if args.validation_source in summary["left_out"]}
            result["choice"] = {"scores_on_validation_source": scores}
            result["chosen"] = max(scores, key=scores.get)
    result["targets"] = {"balanced_type_accuracy": TYPE_TARGET, "normal_called_blast": FALSE_BLAST_TARGET,
                         "all_idb2_accuracy": 0.96, "all_idb2_roc_auc": 0.99}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result.get("summary", result.get("baseline")), indent=2, default=str))


if __name__ == "__main__":
    main()
