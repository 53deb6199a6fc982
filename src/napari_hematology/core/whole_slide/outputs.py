"""Where a whole-slide run writes, and whether it can be resumed: light enough for a dock to ask at once.

The analysis (:mod:`napari_hematology.core.whole_slide.analysis`) imports pandas, SciPy and the cell
classifier; the Whole slide dock asks these questions while it opens, before any of that is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path


def slide_outputs(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Paths a whole-slide run writes for a slide named ``stem``."""
    out_dir = Path(out_dir)
    return {
        "cells": out_dir / f"{stem}_cells.csv",
        "checkpoint": out_dir / f"{stem}_checkpoint.json",
        "summary": out_dir / f"{stem}_summary.json",
        "geojson": out_dir / f"{stem}_cells.geojson",
    }


def slide_stem(path: Path | None) -> str:
    """Output file prefix of a slide file: its name without the format's suffix (``.ome.tif`` whole)."""
    if path is None:
        return "slide"
    for ending in (".ome.tiff", ".ome.tif"):
        if path.name.lower().endswith(ending):
            return path.name[: -len(ending)]
    return path.stem


def has_checkpoint(out_dir: str | Path, stem: str) -> bool:
    """Whether an unfinished run of ``stem`` can be resumed from ``out_dir``."""
    path = slide_outputs(out_dir, stem)["checkpoint"]
    return path.is_file() and not json.loads(path.read_text()).get("complete", False)
