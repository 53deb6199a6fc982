"""analyze and the demo run without pandas' (or anyone's) FutureWarning: nothing they do is deprecated."""

from __future__ import annotations

import warnings

import pytest

from napari_hematology.cli import main
from napari_hematology.core.cells.samples import sample_fields


@pytest.mark.slow
def test_analyze_and_demo_raise_no_future_warning(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert main(["analyze", *map(str, sample_fields()[:2]), "--out", str(tmp_path / "analyze")]) == 0
        assert main(["demo", "--headless", "--out", str(tmp_path / "demo")]) == 0
    assert "FutureWarning" not in capsys.readouterr().err
