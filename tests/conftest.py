"""Shared fixtures. Real data comes from ``../shared/data`` (or $NAPARI_HEMATOLOGY_DATA); tests that need
it skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    """One torch thread (the suite runs on 2 cores), and no triton in CPU-only runs: its LLVM clashes with
    Mesa's once napari has a GL context."""
    import torch

    from napari_hematology.widgets._runner import prepare_torch

    torch.set_num_threads(1)
    prepare_torch()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real public data; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_field_path() -> Path:
    """A bundled 640x480 BCCD smear field."""
    from napari_hematology.core.cells.samples import sample_fields

    return sample_fields()[0]


@pytest.fixture(scope="session")
def sample_field(sample_field_path) -> np.ndarray:
    """The bundled smear field as an RGB uint8 array."""
    from napari_hematology.core.io import read_image

    return read_image(sample_field_path).data
