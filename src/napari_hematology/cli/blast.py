"""``segment`` and ``analyze``: white-cell labels, per-cell tables, summary and HTML report.

``analyze`` processes a folder of slides in parallel through Dask.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_hematology.core.progress import TextProgress

EXIT_SKIPPED = 3
DEVICES = ("auto", "cpu", "cuda", "mps")
MODEL_HELP = "classifier folder from train-classifier (default: the shipped weights)"
PIXEL_SIZE_HELP = (
    "pixel size in micrometres per pixel (default: read from the file, else measured on the red cells, "
    "else 0.072, that of the BCCD fields)"
)
SCALE_HELP = (
    "instead of --pixel-size: cell size relative to the BCCD fields (100x objective, 640x480 camera, "
    "red cells about 100 pixels wide), e.g. 0.5 if cells are half as wide"
)
DEVICE_HELP = "where the classifier runs: auto (CUDA, then MPS, then CPU; default), cpu, cuda or mps"


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--device auto|cpu|cuda|mps``."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)


def report_skipped(skipped: list[dict[str, str]], total: int) -> int:
    """Print each skipped file with its reason and how many were skipped; returns the exit code."""
    for item in skipped:
        print(f"skipped {item['image']}: {' '.join(item['reason'].split())}", file=sys.stderr)
    if not skipped:
        return 0
    print(f"{len(skipped)} of {total} file(s) skipped; the others were written.", file=sys.stderr)
    return EXIT_SKIPPED


def _add_magnification_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pixel-size", type=float, default=None, metavar="UM", help=PIXEL_SIZE_HELP)
    group.add_argument("--scale", type=float, default=None, metavar="FACTOR", help=SCALE_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` and ``analyze`` subcommands."""
    segment = subparsers.add_parser(
        "segment",
        help="segment and classify the white cells of smear images into label images and cell tables",
        description="For each IMAGE write DIR/<stem>_labels.tif (white-cell labels, 0 = background) and "
        "DIR/<stem>_cells.csv (one row per cell: id, centroid, box, areas, N/C ratio, class, blast "
        "probability, class probabilities). Large TIFF slides are read lazily and processed in tiles.",
    )
    segment.add_argument("images", nargs="+", metavar="IMAGE", help="smear images or folders")
    segment.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    segment.add_argument("--model", type=Path, default=None, metavar="DIR", help=MODEL_HELP)
    _add_magnification_options(segment)
    add_device_option(segment)
    segment.set_defaults(func=run_segment)

    analyze = subparsers.add_parser(
        "analyze",
        help="segment, classify and count white cells; write summary.json and report.html",
        description="Run blast detection on a smear image or a folder of them: per-image labels and "
        "cell tables, summary.json (cells per class, blast %) and report.html with overlay pictures. "
        "Several images are processed in parallel on a local Dask cluster, or on an existing one with "
        "--scheduler.",
    )
    analyze.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="smear images or folders")
    analyze.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    analyze.add_argument("--model", type=Path, default=None, metavar="DIR", help=MODEL_HELP)
    _add_magnification_options(analyze)
    add_device_option(analyze)
    analyze.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:8786), or 'synchronous' to stay in this "
        "process; default: a local cluster of at most 2 workers",
    )
    analyze.add_argument(
        "--project", type=Path, default=None, metavar="PROJECT.sqlite",
        help="also put every detected cell into this review project (created if needed) for the Gallery",
    )
    analyze.set_defaults(func=run_analyze)


def _pixel_size(args: argparse.Namespace) -> float | None:
    """The user's pixel size from ``--pixel-size`` or ``--scale``; None to find it per image."""
    from napari_hematology.core.cells.magnification import check_pixel_size, pixel_size_from_scale

    if args.scale is not None:
        return pixel_size_from_scale(args.scale)
    if args.pixel_size is not None:
        return check_pixel_size(args.pixel_size, "--pixel-size")
    return None


def _analyze(args: argparse.Namespace, scheduler: str | None) -> dict:
    from napari_hematology.core.cells.batch import analyze_paths

    return analyze_paths(
        args.images,
        args.out,
        model_dir=args.model,
        scheduler=scheduler,
        pixel_size_um=_pixel_size(args),
        device=args.device,
        progress=TextProgress(),
    )


def _print_pixel_size(item: dict) -> None:
    """Say what pixel size an image was analysed at and how it was found; a fallback is a warning."""
    if item["pixel_size_source"] == "default":
        print(f"Warning: {item['pixel_size_note']}", file=sys.stderr)
    else:
        print(item["pixel_size_note"])


def run_segment(args: argparse.Namespace) -> int:
    """Write labels and cell tables for each image; returns the exit code."""
    summary = _analyze(args, "synchronous")
    for item in summary["images"]:
        _print_pixel_size(item)
        print(f"{Path(item['image']).name}: {item['cells']} white cells -> {args.out / item['cells_table']}")
    return report_skipped(summary["skipped"], len(summary["images"]) + len(summary["skipped"]))


def run_analyze(args: argparse.Namespace) -> int:
    """Analyse images and print the overall summary; returns the exit code."""
    from napari_hematology.core.cells.report import describe_blasts

    summary = _analyze(args, args.scheduler)
    for item in summary["images"]:
        _print_pixel_size(item)
    total = summary["total"]
    print(f"{total['images']} image(s): {describe_blasts(total)}.")
    for warning in total["warnings"]:
        print(f"Warning: {warning}")
    print(f"Report: {args.out / 'report.html'}")
    if args.project is not None:
        from napari_hematology.core.labels.exchange import send_analysis_to_review

        cells = send_analysis_to_review(args.project, summary, args.out)
        print(f"Cells sent to review: {args.project} ({cells} cells in it)")
    return report_skipped(summary["skipped"], len(summary["images"]) + len(summary["skipped"]))
