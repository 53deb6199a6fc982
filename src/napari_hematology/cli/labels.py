"""``label-issues`` (find likely-wrong labels) and ``labels export|import|import-folders|agreement``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_hematology.core.progress import TextProgress


def register(subparsers) -> None:
    """Add the ``label-issues`` and ``labels`` commands."""
    _register_label_issues(subparsers)
    labels = subparsers.add_parser("labels", help="Import, export and compare labels of a project file.")
    actions = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    _register_import(actions)
    _register_import_folders(actions)
    _register_export(actions)
    _register_agreement(actions)


def _register_label_issues(subparsers) -> None:
    from napari_hematology.core.labels.issues import IssueConfig
    from napari_hematology.core.losses import LOSSES

    defaults = IssueConfig()
    parser = subparsers.add_parser(
        "label-issues",
        help="Find likely-wrong labels of single-cell crops (confident learning, cross-validated).",
        description="Rank every cell by how likely its given label is wrong and suggest a class. "
        "CELLS.csv has "
        "columns image,label (crop paths relative to the CSV's folder); ISSUES.csv gets "
        "image,given,suggested,issue_score,is_issue,confidence sorted by issue_score.",
    )
    parser.add_argument("--cells", required=True, type=Path, help="CSV with columns image,label.")
    parser.add_argument("--out", required=True, type=Path, help="ISSUES.csv to write.")
    parser.add_argument("--folds", type=int, default=defaults.folds, help="Cross-validation folds.")
    parser.add_argument("--epochs", type=int, default=defaults.train.epochs, help="Training epochs per fold.")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss, help="Training loss of each fold.")
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=defaults.pretrain_epochs,
        help="Epochs of self-supervised pretraining on the crops before the folds (0 = none).",
    )
    parser.add_argument("--seed", type=int, default=defaults.train.seed)
    parser.add_argument(
        "--project", type=Path, help="Also store given labels and suggestions in this project."
    )
    parser.set_defaults(func=_run_label_issues)


def _run_label_issues(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from napari_hematology.core.io import write_table
    from napari_hematology.core.labels.issues import IssueConfig, find_label_issues
    from napari_hematology.core.labels.review import store_issues

    config = IssueConfig(folds=args.folds, loss=args.loss, pretrain_epochs=args.pretrain_epochs)
    config.train = replace(config.train, epochs=args.epochs, seed=args.seed)
    issues = find_label_issues(args.cells, config, progress=TextProgress())
    write_table(args.out, issues)
    if args.project is not None:
        store_issues(args.project, issues, base=args.cells.parent)
    print(f"{int(issues['is_issue'].sum())} of {len(issues)} labels flagged; ranked list in {args.out}")
    return 0


def _register_import(actions) -> None:
    parser = actions.add_parser(
        "import",
        help="Import labels from a CSV (creates the project file if needed).",
        description="Long CSVs have columns cell,label (and optionally annotator,image,x,y,crop); for wide "
        "CSVs name several --label-columns, each becoming one annotator.",
    )
    parser.add_argument("--project", required=True, type=Path, help="Project file (.sqlite).")
    parser.add_argument("--csv", required=True, type=Path, help="CSV to import.")
    parser.add_argument("--cell-columns", nargs="+", default=["cell"], help="Column(s) identifying a cell.")
    parser.add_argument("--label-columns", nargs="+", default=["label"], help="Column(s) holding labels.")
    parser.add_argument("--annotator", default="import", help="Annotator of a single label column.")
    parser.add_argument("--source", choices=("import", "human", "model"), default="import")
    parser.add_argument("--add-classes", action="store_true", help="Add classes the project does not know.")
    parser.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from napari_hematology.core.io import read_table
    from napari_hematology.core.labels.exchange import import_labels
    from napari_hematology.core.labels.store import AnnotationStore

    table = read_table(args.csv)
    with AnnotationStore(args.project) as store:
        count = import_labels(
            store,
            table,
            cell_columns=args.cell_columns,
            label_columns=args.label_columns,
            annotator=args.annotator,
            source=args.source,
            add_classes=True if args.add_classes else None,
            name=args.csv.name,
        )
        print(f"{count} labels imported into {args.project} ({len(store.cells())} cells).")
    return 0


def _register_import_folders(actions) -> None:
    parser = actions.add_parser(
        "import-folders",
        help="Import labelled crops exported one folder per class (creates the project if needed).",
        description="FOLDER holds one sub-folder of crops per class, as digital-morphology systems export "
        "them. MAP.csv has columns exporter_name,model_class and must name every class folder; folders "
        "it does not name are listed and nothing is imported.",
    )
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="folder of class folders")
    parser.add_argument("--project", required=True, type=Path, help="Project file (.sqlite).")
    parser.add_argument("--mapping", required=True, type=Path, metavar="MAP.csv", help="class-name mapping")
    parser.add_argument("--annotator", default="exporter", help="Who labelled the crops.")
    parser.set_defaults(func=_run_import_folders)


def _run_import_folders(args: argparse.Namespace) -> int:
    from napari_hematology.core.labels.exchange import import_crop_folders, read_class_mapping
    from napari_hematology.core.labels.store import AnnotationStore

    mapping = read_class_mapping(args.mapping)
    with AnnotationStore(args.project) as store:
        counts = import_crop_folders(store, args.folder, mapping, args.annotator)
        total = len(store.cells())
    described = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"{sum(counts.values())} crops imported into {args.project} ({described}); {total} cells in it.")
    return 0


def _register_export(actions) -> None:
    parser = actions.add_parser("export", help="Export current labels (or the full history) to CSV.")
    parser.add_argument("--project", required=True, type=Path, help="Project file (.sqlite).")
    parser.add_argument("--out", required=True, type=Path, help="CSV to write.")
    parser.add_argument(
        "--history", action="store_true", help="Export every label event, not current labels."
    )
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from napari_hematology.core.io import write_table
    from napari_hematology.core.labels.exchange import export_labels
    from napari_hematology.core.labels.store import AnnotationStore

    with AnnotationStore(args.project, create=False) as store:
        table = export_labels(store, history=args.history)
    write_table(args.out, table)
    print(f"{len(table)} rows written to {args.out}")
    return 0


def _register_agreement(actions) -> None:
    parser = actions.add_parser(
        "agreement", help="Cohen's kappa and confusion matrix between two annotators."
    )
    parser.add_argument("--project", required=True, type=Path, help="Project file (.sqlite).")
    parser.add_argument(
        "--annotators",
        nargs=2,
        metavar=("FIRST", "SECOND"),
        help="Whom to compare (default: the two annotators, if there are exactly two).",
    )
    parser.add_argument("--out", type=Path, help="Write the confusion matrix to this CSV.")
    parser.add_argument("--json", type=Path, help="Write kappa, agreement and cell count to this JSON file.")
    parser.set_defaults(func=_run_agreement)


def _run_agreement(args: argparse.Namespace) -> int:
    from napari_hematology.core.errors import InputError
    from napari_hematology.core.io import write_table
    from napari_hematology.core.labels.agreement import agreement
    from napari_hematology.core.labels.store import AnnotationStore

    with AnnotationStore(args.project, create=False) as store:
        labels = store.current_labels()
        names = args.annotators or store.annotators()
    if len(names) != 2:
        raise InputError(f"The project has annotators {', '.join(names)}; choose two with --annotators A B.")
    result = agreement(labels, *names)
    confusion = result.pop("confusion")
    print(
        f"{result['first']} vs {result['second']}: {result['cells']} cells, observed agreement "
        f"{result['observed_agreement']:.3f}, Cohen's kappa {result['kappa']:.3f}"
    )
    if args.out is not None:
        write_table(args.out, confusion.reset_index())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.out is None:
        print(confusion.to_string())
    return 0
