"""Shared fixtures. Real data comes from ``../shared/data`` (or $NAPARI_HEMATOLOGY_DATA); tests that need
it skip when it is absent, except in CI (``CI=true``), where they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NAPARI_HEMATOLOGY_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    """One torch thread (the suite runs on 2 cores), and no triton in CPU-only runs: its LLVM clashes with
    Mesa's once napari has a GL context."""
    import torch

    from napari_hematology.core.torch_loading import prepare_torch

    torch.set_num_threads(1)
    prepare_torch()


def _skip_or_fail_in_ci(message: str, in_ci: str) -> None:
    if os.environ.get("CI", "").lower() in {"true", "1"}:
        pytest.fail(f"{message}; {in_ci}")
    pytest.skip(message)


def require_shared_data(root: Path) -> Path:
    """Return ``root`` if it is a folder; otherwise skip the test, or fail it when ``CI=true``."""
    if not root.is_dir():
        _skip_or_fail_in_ci(
            f"real data not found at {root} (set NAPARI_HEMATOLOGY_DATA to its folder)",
            "CI runs every real-data test, so a missing folder is an error",
        )
    return root


def require_shipped_weights(folder: Path | None = None) -> Path:
    """Return the shipped classifier's folder if its weights are built; otherwise skip the test, or fail it
    when ``CI=true`` (the weights ship with the package, so CI must have them)."""
    from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR

    folder = SHIPPED_MODEL_DIR if folder is None else folder
    if not (folder / "model.safetensors").is_file():
        _skip_or_fail_in_ci(
            f"shipped classifier weights not built yet ({folder / 'model.safetensors'})",
            "they ship with the package, so CI must have them",
        )
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real public data (see :func:`require_shared_data`)."""
    return require_shared_data(SHARED_DATA)


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    """The shipped classifier's folder (see :func:`require_shipped_weights`)."""
    return require_shipped_weights()


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


@pytest.fixture
def reference_fits(monkeypatch):
    """Record how many embeddings each atypical-reference fit gets (the fit itself still runs)."""
    from napari_hematology.core.cells import classifier as classifier_module

    fitted_on: list[int] = []
    real_fit = classifier_module.fit_reference

    def spy(embeddings, assigned):
        fitted_on.append(len(embeddings))
        return real_fit(embeddings, assigned)

    monkeypatch.setattr(classifier_module, "fit_reference", spy)
    return fitted_on


def run_fresh_python(script: str, timeout: float = 300) -> str:
    """Run ``script`` in a new interpreter (nothing imported yet); fail with its stderr, else its stdout."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
