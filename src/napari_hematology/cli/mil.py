"""``napari-hematology mil train|predict`` and ``predict-slide``: slide-level (bag) classification."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_hematology.core.progress import TextProgress
from napari_hematology.core.subtype.features import CELL_CLASSIFIER, DESCRIPTORS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mil`` command group and ``predict-slide``."""
    group = subparsers.add_parser(
        "mil",
        help="train or apply slide-level (multiple-instance) models, e.g. genetic subtypes",
        description="Attention multiple-instance learning: one label per slide (bag), never per cell.",
    )
    commands = group.add_subparsers(dest="mil_command", metavar="SUBCOMMAND", required=True)
    _add_train(commands)
    _add_predict(commands)
    _add_predict_slide(subparsers)


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a bag model from BAGS.csv (bag,image,label; optional patient)",
        description="Train an attention-MIL model. BAGS.csv has one row per single-cell crop with columns "
        "bag, image, label (the bag's label on each row) and optionally patient (bags of one patient stay "
        "in one cross-validation fold). Image paths are relative to the table.",
    )
    parser.add_argument("--bags", type=Path, required=True, help="BAGS.csv")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument(
        "--classes",
        help="comma-separated classes in output order (default: the labels "
        "found, known subtypes PML_RARA,NPM1,CBFB_MYH11,RUNX1_RUNX1T1,control first)",
    )
    parser.add_argument(
        "--encoder",
        default=CELL_CLASSIFIER,
        help=f"cell encoder: {CELL_CLASSIFIER} (default), {CELL_CLASSIFIER}:MODEL_DIR or "
        f"{DESCRIPTORS} (no weights)",
    )
    parser.add_argument("--blasts-only", action="store_true", help="keep only cells predicted as blasts")
    parser.add_argument("--blast-threshold", type=float, default=0.5)
    parser.add_argument(
        "--branch-per-class", action="store_true", help="one attention branch per class (SCEMILA)"
    )
    parser.add_argument("--min-cells", type=int, default=2, help="smallest allowed bag")
    parser.add_argument(
        "--folds",
        type=int,
        default=5,
        help="cross-validation folds grouped by patient, for metrics and calibration",
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="feature cache folder (default: user cache; '' to disable)")
    parser.set_defaults(func=run_train)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="predict every bag of BAGS.csv; writes PRED.csv and attention.csv next to it",
        description="Write one row per bag (bag, predicted, prob_<class>...) to PRED.csv and one row per "
        "cell (bag, image, attention) to attention.csv in the same folder. A label column is ignored.",
    )
    parser.add_argument("--model", type=Path, required=True, help="model folder from 'mil train'")
    parser.add_argument("--bags", type=Path, required=True, help="BAGS.csv (bag,image)")
    parser.add_argument("--out", type=Path, required=True, help="PRED.csv to write")
    parser.add_argument("--classes", help="refuse a model not trained for these comma-separated classes")
    parser.add_argument("--cache", help="feature cache folder (default: user cache; '' to disable)")
    parser.set_defaults(func=run_predict)


def _add_predict_slide(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict-slide",
        help="segment the white cells of one slide image and predict its class (MIL)",
        description="Segmentation + cell encoding/classification + MIL in one go. Writes labels.tif, "
        "cells.csv (label, centroid, attention) and prediction.csv (predicted, prob_<class>) to DIR.",
    )
    parser.add_argument("image", type=Path, help="smear image (TIFF, OME-TIFF, JPEG, PNG, BMP)")
    parser.add_argument("--model", type=Path, required=True, help="model folder from 'mil train'")
    parser.add_argument("--out", type=Path, required=True, help="output folder DIR")
    parser.set_defaults(func=run_predict_slide)


def _classes(text: str | None) -> tuple[str, ...] | None:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else None


def run_train(args: argparse.Namespace) -> int:
    """Train a bag model and print its cross-validated metrics."""
    from napari_hematology.core.subtype.bags import MilConfig, default_train_config
    from napari_hematology.core.subtype.fitting import train_from_table

    train_config = default_train_config()
    train_config.epochs, train_config.seed = args.epochs, args.seed
    config = MilConfig(
        classes=_classes(args.classes),
        encoder=args.encoder,
        blasts_only=args.blasts_only,
        blast_threshold=args.blast_threshold,
        min_cells=args.min_cells,
        branch_per_class=args.branch_per_class,
        folds=args.folds,
        cache_dir=args.cache,
        train=train_config,
    )
    mil = train_from_table(args.bags, args.out, config, progress=TextProgress())
    for note in mil.metadata["notes"]:
        print(f"note: {note}")
    print(f"Saved a {len(mil.classes)}-class bag model ({', '.join(mil.classes)}) to {args.out}")
    print("cross-validation:", json.dumps(mil.metadata["cross_validation"]))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict the bags of a table."""
    from napari_hematology.core.subtype.prediction import ATTENTION_FILE, predict_from_table

    predictions, _ = predict_from_table(
        args.model,
        args.bags,
        args.out,
        expected_classes=_classes(args.classes),
        cache_dir=args.cache,
        progress=TextProgress(),
    )
    print(f"Predicted {len(predictions)} bag(s): {args.out}, {args.out.with_name(ATTENTION_FILE)}")
    return 0


def run_predict_slide(args: argparse.Namespace) -> int:
    """Segment one slide image and predict its class."""
    from napari_hematology.core.subtype.prediction import predict_slide

    result = predict_slide(args.image, args.model, args.out, progress=TextProgress())
    ranked = sorted(result.probabilities.items(), key=lambda item: -item[1])
    print(
        f"{args.image.name}: {result.predicted} ("
        + ", ".join(f"{name} {p:.2f}" for name, p in ranked)
        + f"); results in {args.out}"
    )
    return 0
