"""``classify`` (single-cell crops to a CSV of classes and blast probabilities) and ``train-classifier``."""

from __future__ import annotations

import argparse
import sys
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
        "atypical_score (0-1: the share of the model's training cells that look more typical of their "
        "class than this one, so 0.99 means further out than 99% of them; models without the "
        "atypical.safetensors reference give how unsure the model is instead; a crop without a visible "
        "cell is 'other' with 1). "
        "Files that cannot be read are skipped and named; the exit code is then 3.",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="crop files or folders of crops")
    classify.add_argument("--out", required=True, type=Path, metavar="FILE.csv", help="output CSV")
    classify.add_argument(
        "--model", type=Path, default=None, metavar="DIR",
        help="model folder from train-classifier (default: the shipped weights)",
    )
    classify.add_argument(
        "--adapt", action="store_true",
        help="re-estimate the network's normalisation statistics on these crops first (no labels used); "
        "for a folder of at least 32 crops of one lab's mixed cells (not of one class) that the model never "
        "saw; atypical_score stays that of the unadapted model. Leave-one-source-out it "
        "rescued sources the model failed on and cost a little on the others (docs/cell_classifier.md)",
    )
    add_device_option(classify)
    classify.set_defaults(func=run_classify)

    train = subparsers.add_parser(
        "train-classifier",
        help="fine-tune the cell classifier on a lab's labelled crops (or retrain it on the shared data)",
        description="Fine-tune a cell classifier on your own labelled crops: --cells CELLS.csv (columns "
        "image,label; paths relative to the CSV; labels are class names of the base model) or --project "
        "PROJECT.sqlite (the reviewers' consensus labels, else the imported ones). It starts from --base "
        "(default: the shipped weights), fits a temperature on a held-out fifth when there are at least "
        "100 cells, and writes a model folder for --model. Unreadable crops are skipped and named. "
        "Alternatively --data trains from scratch on the shared data folder (PBC, BCCD, wbc_seg, "
        "ALL-IDB2; nine classes).",
    )
    sources = train.add_mutually_exclusive_group(required=True)
    sources.add_argument("--cells", type=Path, metavar="CELLS.csv", help="labelled crops: image,label")
    sources.add_argument("--project", type=Path, metavar="PROJECT.sqlite", help="a review project")
    sources.add_argument("--data", type=Path, metavar="DIR", help="shared data folder (train from scratch)")
    train.add_argument("--out", required=True, type=Path, metavar="DIR", help="model folder to write")
    train.add_argument(
        "--base", type=Path, default=None, metavar="DIR", help="model folder to start from (default: shipped)"
    )
    train.add_argument(
        "--add-classes", action="store_true", help="grow the model for labels the base model does not know"
    )
    train.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    train.add_argument("--seed", type=int, default=None, help="override the seed")
    add_device_option(train)
    train.set_defaults(func=run_train)


def run_classify(args: argparse.Namespace) -> int:
    """Classify crops and write the CSV."""
    from napari_hematology.core.cells.classify_files import classify_images, unfamiliar_batch_note
    from napari_hematology.core.io import write_table

    table = classify_images(
        args.images,
        model_dir=args.model,
        progress=TextProgress(),
        device=args.device,
        adapt=args.adapt,
        processes=True,
    )
    write_table(args.out, table)
    counts = ", ".join(f"{name} {count}" for name, count in table["label"].value_counts().items())
    print(f"{len(table)} crops classified ({counts}); written to {args.out}")
    note = unfamiliar_batch_note(table["atypical_score"])
    if note:
        advice = "For crops of one lab try --adapt; fine-tune on reviewed cells (train-classifier --cells)."
        print(f"warning: {note} {advice}", file=sys.stderr)
    skipped = table.attrs["skipped"]
    return report_skipped(skipped, len(table) + len(skipped))


def run_train(args: argparse.Namespace) -> int:
    """Fine-tune on a lab's labels (or retrain on the shared data) and save the model folder."""
    from dataclasses import replace

    from napari_hematology.core.errors import InputError

    overrides = {key: value for key, value in (("epochs", args.epochs), ("seed", args.seed))
                 if value is not None}
    if overrides.get("epochs", 1) < 1:
        raise InputError("--epochs must be at least 1.")
    if args.data is not None:
        from napari_hematology.core.cells.recipe import ClassifierRecipe, retrain_classifier

        recipe = ClassifierRecipe()
        recipe.train = replace(recipe.train, device=args.device, **overrides)
        folder = retrain_classifier(args.data, args.out, recipe, progress=TextProgress())
    else:
        folder = _fine_tune(args, overrides)
    print(f"Cell classifier written to {folder}; use it with --model {folder}")
    return 0


def _fine_tune(args: argparse.Namespace, overrides: dict) -> Path:
    """Fine-tune from --cells or --project; prints the cells used and any skipped crops."""
    from dataclasses import replace

    import pandas as pd

    from napari_hematology.core.cells.finetune import FineTuneConfig, cells_from_csv, fine_tune_files

    if args.cells is not None:
        table = cells_from_csv(args.cells)
    else:
        from napari_hematology.core.labels.review import corrected_labels
        from napari_hematology.core.labels.store import AnnotationStore

        with AnnotationStore(args.project, create=False) as store:
            table = corrected_labels(store, require_reviewed=True).rename(columns={"crop": "image"})
    config = FineTuneConfig(add_classes=args.add_classes)
    config.train = replace(config.train, device=args.device, **overrides)
    folder, read = fine_tune_files(table, args.out, args.base, config, progress=TextProgress())
    counts = pd.Series(read.cells.labels).value_counts()
    described = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"Fine-tuned on {len(read.cells)} cells ({described}).")
    if read.skipped:
        print(read.skipped_message(), file=sys.stderr)
    return folder

