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
    total = summary["total"]
    counts = ", ".join(f"{name} {count}" for name, count in total["counts"].items() if count)
    print(f"Analysed {total['images']} sample fields: {total['cells']} white cells ({counts}), "
          f"blasts {total['blast_percent']:.1f}%.")
    print(f"Results in {args.out.resolve()}; open {args.out / 'report.html'} for the overlays.")
    return 0


def _open_napari() -> int:
    import napari

    viewer = napari.Viewer(title="napari-hematology demo")
    viewer.open_sample("napari-hematology", "smear_field")
    viewer.window.add_plugin_dock_widget("napari-hematology", "Blast detection")
    napari.run()
    return 0
