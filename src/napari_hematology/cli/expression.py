"""``napari-hematology expression``: fit, predict and embed with gene-expression models."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_hematology.core.expression.choices import (
    ENCODERS,
    HEAD_CHOICES,
    HEAD_INPUT_CHOICES,
    SMALL_COHORT_CELLS,
    VALUE_KINDS,
)
from napari_hematology.core.progress import TextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``expression`` command group (``fit``, ``predict``, ``embed``)."""
    parser = subparsers.add_parser(
        "expression",
        help="gene-expression models: self-supervised encoder + classifier head",
        description="Pretrain an expression encoder (autoencoder, VIME, SCARF or BYOL) on all cells, train "
        "a classifier head on the labelled ones, and apply it to new data (genes aligned by name).",
    )
    commands = parser.add_subparsers(dest="expression_command", metavar="SUBCOMMAND", required=True)

    fit = commands.add_parser("fit", help="train a model on a labelled file")
    fit.add_argument("--data", type=Path, required=True, help=".h5ad, .csv, .tsv or 10x-style .h5 file")
    fit.add_argument("--label-key", required=True, help="obs column (h5ad), column (csv) or dataset (h5)")
    fit.add_argument("--out", type=Path, required=True, help="model folder to write")
    fit.add_argument("--encoder", choices=ENCODERS, default="ae", help="pretext task (default ae)")
    fit.add_argument("--head", choices=HEAD_CHOICES, default="auto",
                     help=f"classifier head; auto (default) is linear when fewer than {SMALL_COHORT_CELLS} "
                     "cells are labelled (small cohorts), else ffn")
    fit.add_argument("--values", choices=VALUE_KINDS, default="counts",
                     help="counts (default), microarray intensities, or already normalized values")
    fit.add_argument("--n-top-genes", type=int, default=2000,
                     help="highly variable genes kept (default 2000; 0 keeps all)")
    fit.add_argument("--select-genes", type=_gene_count, default=None, metavar="K|auto",
                     help="keep only the K genes that best separate the classes (ANOVA F on the training "
                     "labels; for small cohorts such as patient microarrays); 'auto' picks K by 5-fold "
                     "cross-validation on the training file")
    fit.add_argument("--head-input", choices=HEAD_INPUT_CHOICES, default="auto",
                     help="what the linear/ffn head reads: the encoder's latent or the preprocessed genes; "
                     f"auto (default) uses genes for files of fewer than {SMALL_COHORT_CELLS} cells "
                     "(small cohorts)")
    fit.add_argument("--pretrain-epochs", type=int, default=None, help="encoder pretraining epochs")
    fit.add_argument("--seed", type=int, default=0, help="random seed")
    fit.set_defaults(func=run_fit)

    for name, help_text, out_help in (
        ("predict", "predict classes of the cells of a file", "CSV: cell,predicted,prob_<class>..."),
        ("embed", "write the latent vector of every cell", "CSV: cell,latent_0,..."),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--model", type=Path, required=True, help="model folder written by fit")
        command.add_argument("--data", type=Path, required=True, help=".h5ad, .csv, .tsv or .h5 file")
        command.add_argument("--out", type=Path, required=True, help=out_help)
        command.set_defaults(func=run_apply, apply=name)


def run_fit(args: argparse.Namespace) -> int:
    """Fit and save a model; returns the exit code."""
    from napari_hematology.core.expression import (
        ExpressionConfig,
        fit_expression_model,
        load_expression,
        save_expression_model,
    )
    from napari_hematology.core.expression.selection import cross_validate_gene_count

    fixed_count = None if args.select_genes == "auto" else args.select_genes
    config = ExpressionConfig.from_options(args.encoder, args.head, args.values, args.n_top_genes,
                                           args.pretrain_epochs, args.seed, fixed_count, args.head_input)
    data = load_expression(args.data, args.label_key)
    if args.select_genes == "auto":
        count, scores = cross_validate_gene_count(data, args.label_key, config, progress=TextProgress())
        config.preprocess.select_genes = count
        print("Cross-validated accuracy by gene count: "
              + ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()) + f"; using {count}")
    model = fit_expression_model(data, args.label_key, config, progress=TextProgress())
    save_expression_model(model, args.out)
    _print_notes(data.notes)
    print(f"Saved {args.encoder}+{model.network.head_kind} model ({len(model.classes)} classes, "
          f"{len(model.preprocessor.genes)} genes, head reads the {model.network.head_input}) to {args.out}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    """Predict or embed the cells of a file with a saved model; returns the exit code."""
    from napari_hematology.core.expression import (
        embed_expression,
        load_expression,
        load_expression_model,
        predict_expression,
    )
    from napari_hematology.core.io import write_table

    model = load_expression_model(args.model)
    data = load_expression(args.data)
    apply = predict_expression if args.apply == "predict" else embed_expression
    table = apply(model, data, progress=TextProgress())
    write_table(args.out, table)
    _print_notes(data.notes)
    print(f"Wrote {len(table)} cells to {args.out}")
    return 0


def _gene_count(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a gene count or 'auto', got {text!r}") from None


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}")
