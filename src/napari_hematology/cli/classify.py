"""``classify`` (single-cell crops to a CSV of classes and blast probabilities) and ``train-classifier``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_hematology.cli.blast import add_device_option, report_skipped
from napari_hematology.core.progress import TextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``classify`` and ``train-classifier`` subcommands."""
    classify = subparsers.add_parser(
        "classify",
        help="classify single white-cell crops (type and blast probability) into a CSV",
        description="Classify single white-cell crops (one cell roughly centred per image, any size, "
        "RGB). Writes one row per image: image, label, blast_probability, prob_<class> per class and "
        "atypical_score (0-1: how unsure the model is; a crop without a visible cell is 'other' with 1). "
        "Files that cannot be read are skipped and named; the exit code is then 3.",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="crop files or folders of crops")
    classify.add_argument("--out", required=True, type=Path, metavar="FILE.csv", help="output CSV")
    classify.add_argument(
        "--model", type=Path, default=None, metavar="DIR",
        help="model folder from train-classifier (default: the shipped weights)",
    )
    add_device_option(classify)
    classify.set_defaults(func=run_classify)

    train = subparsers.add_parser(
        "train-classifier",
        help="retrain the cell classifier (the recipe of the shipped weights)",
        description="Train the cell classifier from the labelled single-cell crops of the shared data "
        "folder (all_idb2, bccd_crops, wbc_seg) and save it as a model folder for --model.",
    )
    train.add_argument("--data", required=True, type=Path, metavar="DIR", help="shared data folder")
    train.add_argument("--out", required=True, type=Path, metavar="DIR", help="model folder to write")
    train.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    train.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    train.set_defaults(func=run_train)


def run_classify(args: argparse.Namespace) -> int:
    """Classify crops and write the CSV."""
    from napari_hematology.core.cells.classifier import classify_images
    from napari_hematology.core.io import write_table

    table = classify_images(
        args.images, model_dir=args.model, progress=TextProgress(), device=args.device
    )
    write_table(args.out, table)
    counts = ", ".join(f"{name} {count}" for name, count in table["label"].value_counts().items())
    print(f"{len(table)} crops classified ({counts}); written to {args.out}")
    skipped = table.attrs["skipped"]
    return report_skipped(skipped, len(table) + len(skipped))


def run_train(args: argparse.Namespace) -> int:
    """Retrain the classifier and save it."""
    from dataclasses import replace

    from napari_hematology.core.cells.recipe import ClassifierRecipe, retrain_classifier
    from napari_hematology.core.errors import InputError

    overrides = {key: value for key, value in (("epochs", args.epochs), ("seed", args.seed))
                 if value is not None}
    if overrides.get("epochs", 1) < 1:
        raise InputError("--epochs must be at least 1.")
    recipe = ClassifierRecipe()
    recipe.train = replace(recipe.train, **overrides)
    folder = retrain_classifier(args.data, args.out, recipe, progress=TextProgress())
    print(f"Cell classifier written to {folder}; use it with --model {folder}")
    return 0
