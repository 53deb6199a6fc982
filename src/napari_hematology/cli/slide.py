"""``slide``: whole slides of any scanner format: info, reading area, tile-by-tile analysis, GeoJSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_hematology.core.progress import TextProgress

MODEL_HELP = "classifier folder from train-classifier (default: the shipped weights)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``slide`` command group."""
    slide = subparsers.add_parser(
        "slide",
        help="whole slides (SVS, NDPI, MRXS, SCN, BIF, DICOM, OME-TIFF): info, reading area, analysis",
        description="Work on whole slides as scanners write them. 'slide info' shows the format, levels "
        "and pixel size; 'slide reading-area' finds the smear's monolayer; 'slide analyze' counts white "
        "cells tile by tile (resumable) and writes QuPath GeoJSON; 'slide export-geojson' turns a cell "
        "table into QuPath detections.",
    )
    commands = slide.add_subparsers(dest="slide_command", metavar="SUBCOMMAND", required=True)

    info = commands.add_parser("info", help="format, reader, pyramid levels and pixel size of slides")
    info.add_argument("slides", nargs="+", metavar="SLIDE")
    info.set_defaults(func=run_info)

    area = commands.add_parser(
        "reading-area",
        help="find the smear's monolayer and write it as QuPath annotations",
        description="Find where red cells lie side by side (enough coverage, little overlap) and write the "
        "area as GeoJSON polygons in slide pixels; QuPath opens them as annotations.",
    )
    area.add_argument("slide", metavar="SLIDE")
    area.add_argument("--out", required=True, type=Path, metavar="FILE", help="GeoJSON file to write")
    area.set_defaults(func=run_reading_area)

    analyze = commands.add_parser(
        "analyze",
        help="count and classify white cells over a whole slide, tile by tile",
        description="Segment and classify the white cells of slides tile by tile, in their reading area by "
        "default. Writes DIR/<stem>_cells.csv, <stem>_cells.geojson (QuPath detections), "
        "<stem>_summary.json and a checkpoint per slide; an interrupted run continues with --resume. "
        "Several slides run side by side on a local Dask cluster, or with --scheduler on a running one.",
    )
    analyze.add_argument("slides", nargs="+", metavar="SLIDE")
    analyze.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    where = analyze.add_mutually_exclusive_group()
    where.add_argument(
        "--region",
        type=Path,
        metavar="GEOJSON",
        help="read only inside these polygons (e.g. annotations exported from QuPath)",
    )
    where.add_argument(
        "--whole-slide", action="store_true", help="read every stained tile instead of the reading area"
    )
    analyze.add_argument(
        "--cells",
        type=int,
        default=None,
        metavar="N",
        help="stop after N white cells (100/200-cell differential)",
    )
    analyze.add_argument("--resume", action="store_true", help="continue the unfinished runs in DIR")
    analyze.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:8786): one job per slide, resumed from its "
        "checkpoint if a worker is lost; files, DIR and --model must be at the same paths on every worker",
    )
    analyze.add_argument("--model", type=Path, default=None, metavar="DIR", help=MODEL_HELP)
    analyze.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="UM",
        help="micrometres per pixel, when the file's value is missing or wrong (default: the file's, else "
        "measured on the red cells)",
    )
    analyze.set_defaults(func=run_analyze)

    export = commands.add_parser(
        "export-geojson",
        help="turn a cell table (from segment or slide analyze) into QuPath GeoJSON detections",
    )
    export.add_argument("cells", type=Path, metavar="CELLS_CSV")
    export.add_argument("--out", required=True, type=Path, metavar="FILE", help="GeoJSON file to write")
    export.set_defaults(func=run_export)


def run_info(args: argparse.Namespace) -> int:
    """Print what each slide is; returns the exit code."""
    from napari_hematology.core.io import read_image

    for path in args.slides:
        image = read_image(path)
        levels = ", ".join("x".join(map(str, level.shape[1::-1])) for level in image.levels)
        size = (
            f"{image.pixel_size_um:.4g} µm/pixel ({image.pixel_size_source})"
            if image.pixel_size_um
            else "pixel size not recorded"
        )
        print(f"{Path(path).name}: {image.format_name} via {image.reader}; levels {levels}; {size}")
    return 0


def run_reading_area(args: argparse.Namespace) -> int:
    """Find and write the reading area; returns the exit code."""
    from napari_hematology.core.io import read_image
    from napari_hematology.core.whole_slide.geojson import polygons_to_geojson, write_geojson
    from napari_hematology.core.whole_slide.reading_area import find_reading_area

    area = find_reading_area(read_image(args.slide), progress=TextProgress())
    write_geojson(args.out, polygons_to_geojson(area.polygons))
    for note in area.notes:
        print(note)
    blocks = f"{int(area.mask.sum())} blocks of {area.block_px:.0f} pixels"
    print(f"{len(area.polygons)} region(s), {blocks} -> {args.out}")
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    """Analyse slides and print their summaries; returns the exit code."""
    from napari_hematology.core.errors import InputError
    from napari_hematology.core.whole_slide.analysis import WholeSlideConfig, analyze_slide_file
    from napari_hematology.core.whole_slide.geojson import geojson_to_polygons, read_geojson
    from napari_hematology.core.whole_slide.many import analyze_slides

    regions = None
    if args.region is not None:
        regions = geojson_to_polygons(read_geojson(args.region))
        if not regions:
            raise InputError(f"{args.region.name} holds no polygon to read in.")
    config = WholeSlideConfig(max_white_cells=args.cells, pixel_size_um=args.pixel_size)
    where = dict(regions=regions, reading_area=not args.whole_slide, config=config, resume=args.resume)
    if len(args.slides) == 1 and args.scheduler is None:
        result = analyze_slide_file(
            args.slides[0], args.out, model_dir=args.model, progress=TextProgress(), **where
        )
        _print_slide(result.summary)
        print(f"Cells: {result.outputs['cells']}  QuPath: {result.outputs['geojson']}")
        return 0
    outcomes = analyze_slides(
        args.slides, args.out, scheduler=args.scheduler, model_dir=args.model, progress=TextProgress(),
        **where,
    )
    for slide, outcome in zip(args.slides, outcomes, strict=True):
        if isinstance(outcome, InputError):
            print(f"{Path(slide).name}: skipped: {outcome}")
        else:
            _print_slide(outcome)
    print(f"Results in {args.out}")
    return 0 if any(not isinstance(outcome, InputError) for outcome in outcomes) else 1


def _print_slide(summary: dict) -> None:
    for note in summary["notes"]:
        print(note)
    blast = "n/a" if summary["blast_percent"] is None else f"{summary['blast_percent']:.1f}%"
    name = Path(summary["slide"]).name if summary.get("slide") else "slide"
    print(f"{name}: {summary['cells']} white cells in {summary['region']}, blasts {blast}.")
    print(json.dumps(summary["counts"]))


def run_export(args: argparse.Namespace) -> int:
    """Write a cell table as QuPath detections; returns the exit code."""
    from napari_hematology.core.io import read_table
    from napari_hematology.core.whole_slide.geojson import cells_to_geojson, write_geojson

    cells = read_table(args.cells, ["centroid_y", "centroid_x"])
    write_geojson(args.out, cells_to_geojson(cells))
    print(f"{len(cells)} cells -> {args.out}")
    return 0
