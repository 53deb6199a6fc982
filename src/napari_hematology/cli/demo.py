"""``napari-hematology demo``: the main job on the bundled sample, in napari or headless."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from napari_hematology.core.cells.samples import sample_fields
from napari_hematology.core.progress import TextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="run blast detection on the bundled sample smear (napari if a display is available)",
        description="Open the bundled sample smear in napari with the Blast detection widget when a "
        "display is available; otherwise run the same pipeline headless and write its results.",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for headless results")
    parser.add_argument("--headless", action="store_true", help="never open a window")
    parser.set_defaults(func=run_demo)


def display_available() -> bool:
    """Whether a window can be shown (an X or Wayland display, or macOS / Windows)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    if not args.headless and display_available():
        return _open_napari()
    from napari_hematology.core.cells.batch import analyze_paths

    summary = analyze_paths(sample_fields(), args.out, progress=TextProgress())
    print("\n".join(demo_lines(summary, args.out.resolve())))
    return 0


def demo_lines(summary: dict, out: Path) -> list[str]:
    """What the demo analysed, what it found and where the results are, as lines of text."""
    from napari_hematology.core.cells.report import describe_blasts, describe_counts

    total = summary["total"]
    return [
        f"Analysed the {total['images']} bundled sample fields (BCCD, normal peripheral blood, so no blasts "
        "are expected; no public smear with blasts allows redistribution, so none is bundled):",
        *(f"  {Path(item['image']).name}: {describe_counts(item)}" for item in summary["images"]),
        f"Total: {describe_counts(total)}; {describe_blasts(total)}.",
        *(f"Warning: {warning}" for warning in total["warnings"]),
        "Look at:",
        f"  {out / 'report.html'}  (the cells of each class, outlined fields)",
        f"  {out}/*_cells.csv  (one row per cell: class, probabilities, shape)",
        f"  {out / 'summary.json'}  (counts, blast percentages with 95% intervals)",
    ]


def _open_napari() -> int:
    import napari

    viewer = napari.Viewer(title="napari-hematology demo")
    viewer.open_sample("napari-hematology", "smear_field")
    viewer.window.add_plugin_dock_widget("napari-hematology", "Blast detection")
    napari.run()
    return 0
