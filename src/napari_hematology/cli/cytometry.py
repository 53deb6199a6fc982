"""``napari-hematology cytometry``: deep clustering of FCS files (IDEC / VaDE, staged, soft labels)."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_hematology.core.progress import TextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cytometry`` command group (``cluster``, ``pipeline``, ``apply``)."""
    parser = subparsers.add_parser(
        "cytometry",
        help="cluster flow / mass cytometry events (FCS) with IDEC or VaDE",
        description="Deep clustering of per-cell signals from FCS 2.0/3.0/3.1 files.",
    )
    commands = parser.add_subparsers(dest="cytometry_command", metavar="SUBCOMMAND", required=True)

    cluster = commands.add_parser(
        "cluster",
        help="one clustering stage over a batch of FCS files",
        description="Train one IDEC or VaDE model on the pooled events of the files and write "
        "DIR/<stem>_clusters.csv (event,cluster,prob_<k>...) and DIR/proportions.csv (one row per file).",
    )
    _add_common(cluster)
    cluster.add_argument("--clusters", type=int, default=5, help="number of clusters (default 5)")
    cluster.add_argument("--method", choices=("idec", "vade"), default="idec", help="default idec")
    cluster.add_argument(
        "--channels",
        nargs="+",
        metavar="NAME",
        help="channels by detector ($PnN) or marker ($PnS) name; default: marker channels",
    )
    cluster.add_argument("--transform", choices=("arcsinh", "logicle", "none"), default="arcsinh")
    cluster.add_argument(
        "--cofactor",
        type=float,
        default=150.0,
        help="arcsinh cofactor: ~150 for flow, 5 for mass cytometry (default 150)",
    )
    cluster.add_argument(
        "--no-compensation",
        action="store_true",
        help="do not apply the files' spillover matrices (already compensated data)",
    )
    cluster.add_argument("--epochs", type=int, help="clustering epochs (pretraining uses the same number)")
    cluster.set_defaults(func=run_cluster)

    pipeline = commands.add_parser(
        "pipeline",
        help="staged clustering from a YAML stages file, optionally with soft labels",
        description="Run the stages of STAGES.yaml (e.g. IDEC for red cells vs platelets, then VaDE on "
        "the red cells). With --reference REF.csv (file,population,fraction) each file's predicted "
        "proportions are trained to match its reference, giving cell-level soft labels.",
    )
    pipeline.add_argument("--config", type=Path, required=True, metavar="STAGES.yaml")
    _add_common(pipeline)
    pipeline.add_argument(
        "--reference",
        type=Path,
        metavar="REF.csv",
        help="per-file reference fractions: columns file,population,fraction",
    )
    pipeline.set_defaults(func=run_staged)

    apply = commands.add_parser(
        "apply",
        help="assign new FCS files with a saved model (no training)",
        description="Assign every event of the files with a model folder written by --save-model.",
    )
    apply.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR")
    apply.add_argument("fcs", nargs="+", type=Path, metavar="FCS")
    apply.add_argument("--out", type=Path, required=True, metavar="DIR")
    apply.set_defaults(func=run_apply)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fcs", nargs="+", type=Path, metavar="FCS", help="FCS files or folders")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--per-sample", action="store_true", help="train one model per file instead of one pooled model"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save-model",
        type=Path,
        metavar="MODEL_DIR",
        help="save the trained (pooled) models for 'cytometry apply'",
    )


def run_cluster(args: argparse.Namespace) -> int:
    """Run ``cytometry cluster``."""
    from napari_hematology.core.cytometry import single_stage_config

    settings = {} if args.epochs is None else {"epochs": args.epochs, "pretrain_epochs": args.epochs}
    config = single_stage_config(
        clusters=args.clusters,
        method=args.method,
        channels=args.channels,
        transform=args.transform,
        cofactor=args.cofactor,
        compensate=not args.no_compensation,
        pooled=not args.per_sample,
        seed=args.seed,
        settings=settings,
    )
    return _train_and_write(args, config, None)


def run_staged(args: argparse.Namespace) -> int:
    """Run ``cytometry pipeline``."""
    import dataclasses

    from napari_hematology.core.cytometry import load_pipeline_config

    config = load_pipeline_config(args.config)
    config = dataclasses.replace(config, seed=args.seed, pooled=config.pooled and not args.per_sample)
    return _train_and_write(args, config, args.reference)


def run_apply(args: argparse.Namespace) -> int:
    """Run ``cytometry apply``."""
    from napari_hematology.core.cytometry import apply_pipeline, list_fcs

    result = apply_pipeline(list_fcs(args.fcs), args.model, progress=TextProgress())
    return _write(result, args.out)


def _train_and_write(args: argparse.Namespace, config, reference) -> int:
    from napari_hematology.core.cytometry import list_fcs, run_pipeline, save_pipeline

    result = run_pipeline(list_fcs(args.fcs), config, reference, progress=TextProgress())
    if args.save_model is not None:
        save_pipeline(result, args.save_model)
        print(f"Saved the models to {args.save_model}")
    return _write(result, args.out)


def _write(result, out: Path) -> int:
    from napari_hematology.core.cytometry import write_outputs

    written = write_outputs(result, out)
    print(f"Wrote {len(written) - 1} cluster table(s) and {written[-1]}")
    return 0
