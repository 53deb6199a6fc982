"""``napari-hematology cytometry``: deep clustering of FCS files (IDEC / VaDE, staged, soft labels)."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_hematology.core.progress import TextProgress

TRANSFORM_CHOICES = ("auto", "arcsinh", "logicle", "none")
COMPENSATION_CHOICES = {"auto": "auto", "yes": True, "no": False}
OUTPUTS = (
    "DIR/<stem>_clusters.csv (one row per event), DIR/proportions.csv (one row per file, with the "
    "preprocessing of each), DIR/preprocessing.json (what each file's values were found to be and why), "
    "DIR/populations.json (the number of clusters, how it was chosen, each population's name and why) and "
    "DIR/markers.csv (median of each channel per cluster)"
)


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
        description="Train one IDEC or VaDE model on the pooled events of the files and write " + OUTPUTS
        + ". Whether each file is compensated and transformed is decided from its values unless "
        "--transform / --compensation say otherwise.",
    )
    _add_common(cluster)
    cluster.add_argument(
        "--clusters",
        type=int,
        help="number of clusters (default: chosen from the data, 2-15, and reported)",
    )
    cluster.add_argument("--method", choices=("idec", "vade"), default="idec", help="default idec")
    cluster.add_argument(
        "--channels",
        nargs="+",
        metavar="NAME",
        help="channels by detector ($PnN) or marker ($PnS) name; default: marker channels",
    )
    cluster.add_argument("--epochs", type=int, help="clustering epochs (pretraining uses the same number)")
    cluster.set_defaults(func=run_cluster)

    pipeline = commands.add_parser(
        "pipeline",
        help="staged clustering from a YAML stages file, optionally with soft labels",
        description="Run the stages of STAGES.yaml (e.g. IDEC for red cells vs platelets, then VaDE on "
        "the red cells). With --reference REF.csv (file,population,fraction) each file's predicted "
        "proportions are trained to match its reference, giving cell-level soft labels. Writes " + OUTPUTS
        + "; populations named in the YAML are used in every output.",
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
        description="Assign every event of the files with a model folder written by --save-model; "
        "writes the same outputs as 'cluster'.",
    )
    apply.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR")
    apply.add_argument("fcs", nargs="+", type=Path, metavar="FCS")
    apply.add_argument("--out", type=Path, required=True, metavar="DIR")
    _add_exports(apply)
    apply.set_defaults(func=run_apply)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fcs", nargs="+", type=Path, metavar="FCS", help="FCS files or folders")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--transform",
        choices=TRANSFORM_CHOICES,
        help="auto (default): arcsinh on linear values, nothing on values already transformed "
        "(logicle, arcsinh, log); or force one for every file",
    )
    parser.add_argument(
        "--compensation",
        choices=tuple(COMPENSATION_CHOICES),
        help="auto (default): apply a file's spillover matrix only to raw values; yes / no: force it",
    )
    parser.add_argument(
        "--cofactor",
        type=float,
        help="arcsinh cofactor (default: 5 for mass cytometry, 150 for flow, per file)",
    )
    parser.add_argument(
        "--per-sample",
        action="store_true",
        help="train one model per file instead of one pooled model (the autoencoder is pretrained once on "
        "the pooled events, then each file's clusters are fitted)",
    )
    parser.add_argument(
        "--markers",
        metavar="TABLE.yaml",
        help="marker table that names the clusters from their marker levels (default: the shipped table "
        "of common blood panels; 'none' keeps numbers)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save-model",
        type=Path,
        metavar="MODEL_DIR",
        help="save the trained (pooled) models for 'cytometry apply'",
    )
    _add_exports(parser)


def _add_exports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fcs-out",
        type=Path,
        metavar="DIR",
        help="write each input again as DIR/<stem>_clusters.fcs with the cluster and its probability as "
        "new parameters (names in the keyword <STAGE>_NAMES)",
    )
    parser.add_argument(
        "--h5ad",
        type=Path,
        metavar="FILE",
        help="write an AnnData file: events x channels, sample, cluster and probability in obs",
    )


def run_cluster(args: argparse.Namespace) -> int:
    """Run ``cytometry cluster``."""
    from napari_hematology.core.cytometry import single_stage_config

    settings = {} if args.epochs is None else {"epochs": args.epochs, "pretrain_epochs": args.epochs}
    config = single_stage_config(
        clusters=args.clusters,
        method=args.method,
        channels=args.channels,
        pooled=not args.per_sample,
        seed=args.seed,
        settings=settings,
    )
    return _train_and_write(args, _with_preprocessing_flags(config, args), None)


def run_staged(args: argparse.Namespace) -> int:
    """Run ``cytometry pipeline``."""
    import dataclasses

    from napari_hematology.core.cytometry import load_pipeline_config

    config = load_pipeline_config(args.config)
    config = dataclasses.replace(config, seed=args.seed, pooled=config.pooled and not args.per_sample)
    return _train_and_write(args, _with_preprocessing_flags(config, args), args.reference)


def run_apply(args: argparse.Namespace) -> int:
    """Run ``cytometry apply``."""
    from napari_hematology.core.cytometry import apply_pipeline, list_fcs

    _one_torch_thread()
    result = apply_pipeline(list_fcs(args.fcs), args.model, progress=TextProgress())
    return _write(result, args)


def _with_preprocessing_flags(config, args: argparse.Namespace):
    """The config with the flags that were given (the others stay as the config or YAML has them)."""
    import dataclasses

    given = {
        "transform": args.transform,
        "compensate": None if args.compensation is None else COMPENSATION_CHOICES[args.compensation],
        "cofactor": args.cofactor,
        "markers": getattr(args, "markers", None),
    }
    config = dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})
    config.check()
    return config


def _one_torch_thread() -> None:
    """Use one torch thread in this process.

    The clustering models are small: extra intra-op threads only wait on each other, most of all on a
    busy machine (ten times slower on two shared cores).
    """
    import torch

    torch.set_num_threads(1)


def _train_and_write(args: argparse.Namespace, config, reference) -> int:
    from napari_hematology.core.cytometry import list_fcs, run_pipeline, save_pipeline

    _one_torch_thread()
    result = run_pipeline(list_fcs(args.fcs), config, reference, progress=TextProgress())
    if args.save_model is not None:
        save_pipeline(result, args.save_model)
        print(f"Saved the models to {args.save_model}")
    return _write(result, args)


def _write(result, args: argparse.Namespace) -> int:
    from napari_hematology.core.cytometry import (
        populations_summary,
        write_anndata,
        write_fcs_outputs,
        write_outputs,
    )

    _print_preprocessing(result)
    for line in populations_summary(result):
        print(line)
    written = write_outputs(result, args.out)
    print(f"Wrote {len(result.samples)} cluster table(s), markers, preprocessing and {written[-1]}")
    if args.fcs_out is not None:
        written = write_fcs_outputs(result, args.fcs_out)
        print(f"Wrote {len(written)} FCS file(s) with clusters to {args.fcs_out}")
    if args.h5ad is not None:
        print(f"Wrote {write_anndata(result, args.h5ad)}")
    return 0


def _print_preprocessing(result) -> None:
    for skipped in result.batch.skipped:
        print(f"skipped: {skipped}")
    for warning in result.batch.warnings:
        print(f"warning: {warning}")
    for sample, decision in zip(result.samples, result.batch.preprocessing, strict=True):
        print(f"{sample.name}: {decision.summary()}")
        for note in sample.notes:
            print(f"  note: {note}")
        for warning in decision.warnings:
            print(f"  warning: {warning}")
