"""The bundled sample images (BCCD, MIT): smear fields and single white-cell crops."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_images"


def sample_fields() -> list[Path]:
    """Paths of the bundled 640x480 smear fields."""
    return sorted((SAMPLE_DIR / "fields").glob("*.jpg"))


def sample_cells() -> list[Path]:
    """Paths of the bundled single white-cell crops, named ``<type>_<source>.jpg``."""
    return sorted((SAMPLE_DIR / "cells").glob("*.jpg"))
