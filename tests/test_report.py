"""What a reviewer reads: summary uncertainty and warnings, report gallery, overlays, colours, demo text."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from blast_helpers import FakeClassifier
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

from napari_hematology.cli import main
from napari_hematology.cli.demo import demo_lines
from napari_hematology.core.cells.batch import (
    MIN_DIFFERENTIAL_CELLS,
    analyze_paths,
    blast_uncertainty,
    wilson_interval,
)
from napari_hematology.core.cells.classes import CLASS_COLOURS, OTHER_COLOUR
from napari_hematology.core.cells.report import describe_blasts, write_overlay

# Stain colours: the darkest 2% of pixels (nuclei), red cells and background of the bundled BCCD fields,
# then a darker nucleus purple and a pale lavender cytoplasm as seen on other Romanowsky-stained smears.
STAIN_COLOURS = [(151, 124, 151), (184, 156, 151), (209, 210, 207), (80, 45, 125), (170, 150, 200)]
MIN_COLOUR_DISTANCE = 20  # CIEDE2000


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 5) == pytest.approx((0.0, 0.4345), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-4)


def test_small_counts_get_a_plain_warning_and_large_ones_none():
    few = blast_uncertainty(0, 5)
    assert few["blast_ci95_percent"] == [0.0, 43.4]
    assert "Only 5 white cells" in few["warnings"][0] and str(MIN_DIFFERENTIAL_CELLS) in few["warnings"][0]
    assert blast_uncertainty(3, MIN_DIFFERENTIAL_CELLS - 1)["warnings"]
    assert blast_uncertainty(3, MIN_DIFFERENTIAL_CELLS)["warnings"] == []
    empty = blast_uncertainty(0, 0)
    assert empty["blast_ci95_percent"] is None and "No white cells" in empty["warnings"][0]


def test_blast_line_carries_its_interval():
    part = {"cells": 5, "blast_percent": 0.0, **blast_uncertainty(0, 5)}
    assert describe_blasts(part) == "blasts 0.0% of 5 white cells, 95% CI 0.0-43.4%"
    assert describe_blasts({"cells": 0}) == "blasts n/a (no white cells)"


def test_summary_and_report_carry_interval_warning_and_cell_gallery(sample_field_path, tmp_path):
    classifier = FakeClassifier()
    summary = analyze_paths([sample_field_path], tmp_path, scheduler="synchronous", classifier=classifier)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    total, (image,) = summary["total"], summary["images"]
    cells = total["cells"]
    assert 0 < cells < MIN_DIFFERENTIAL_CELLS
    low, high = wilson_interval(cells, cells)  # the fake calls every cell a blast
    assert total["blast_ci95_percent"] == image["blast_ci95_percent"] == [round(100 * low, 1), 100.0]
    assert total["warnings"] and image["warnings"]
    report = (tmp_path / "report.html").read_text()
    assert "95% CI" in report and total["warnings"][0] in report
    thumbnails = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', report)
    assert len(thumbnails) == cells  # every blast shown in the gallery
    sides = {Image.open(io.BytesIO(base64.b64decode(data))).size for data in thumbnails}
    assert min(min(side) for side in sides) >= 96
    assert re.search(r"<h3>blast: \d+ cells? \(showing all \d+\)</h3>", report)
    assert "p 0.80" in report


def test_overlay_outlines_are_thick_and_cells_are_named(tmp_path):
    image = np.random.default_rng(0).integers(200, 230, (200, 200, 3), dtype=np.uint8)
    labels = np.zeros((200, 200), np.int32)
    labels[80:160, 60:140] = 1
    box = {"bbox_y0": [80], "bbox_x0": [60], "bbox_y1": [160], "bbox_x1": [140]}
    cells = pd.DataFrame({"cell_id": [1], "label": ["blast"], **box})
    picture = iio.imread(write_overlay(tmp_path / "overlay.png", image, labels, cells))
    red = np.all(picture == CLASS_COLOURS["blast"], axis=-1)
    assert red[120, 50:70].sum() >= 3  # the outline across the cell's left edge
    assert red[:80, 60:140].any()  # the class name above the cell


def _distance(first, second) -> float:
    lab = rgb2lab(np.array([[first, second]], dtype=float) / 255)
    return float(deltaE_ciede2000(lab[0, 0], lab[0, 1]))


def test_class_colours_show_on_stained_smears_and_differ_from_each_other():
    colours = {**CLASS_COLOURS, "other": OTHER_COLOUR}
    for name, colour in colours.items():
        for stain in STAIN_COLOURS:
            assert _distance(colour, stain) >= MIN_COLOUR_DISTANCE, (name, stain)
    for (first, a), (second, b) in itertools.combinations(colours.items(), 2):
        assert _distance(a, b) >= MIN_COLOUR_DISTANCE, (first, second)


def test_demo_says_what_it_analysed_and_where_to_look(tmp_path):
    images = [
        {"image": "/x/BloodImage_00000.jpg", "cells": 1, "counts": {"neutrophil": 1, "blast": 0}},
        {"image": "/x/BloodImage_00010.jpg", "cells": 2, "counts": {"neutrophil": 0, "blast": 2}},
    ]
    total = {"images": 2, "cells": 3, "counts": {"neutrophil": 1, "blast": 2}, "blast_percent": 66.67}
    summary = {"total": {**total, **blast_uncertainty(2, 3)}, "images": images}
    text = "\n".join(demo_lines(summary, tmp_path))
    assert "BloodImage_00000.jpg: 1 white cell (neutrophil 1)" in text
    assert "BloodImage_00010.jpg: 2 white cells (blast 2)" in text
    assert "blasts 66.7% of 3 white cells, 95% CI" in text
    assert "Warning: Only 3 white cells" in text
    assert str(tmp_path / "report.html") in text and "_cells.csv" in text and "BCCD" in text


@pytest.mark.slow
def test_analyze_command_prints_the_summary_interval_and_warning(sample_field_path, tmp_path, capsys,
                                                                   shipped_weights):
    out = tmp_path / "out"
    assert main(["analyze", str(sample_field_path), "--out", str(out), "--scheduler", "synchronous"]) == 0
    printed = capsys.readouterr().out
    total = json.loads((out / "summary.json").read_text())["total"]
    cells, blasts = total["cells"], total["counts"]["blast"]
    assert 0 < cells < MIN_DIFFERENTIAL_CELLS
    low, high = wilson_interval(blasts, cells)
    assert total["blast_ci95_percent"] == [round(100 * low, 1), round(100 * high, 1)]
    assert describe_blasts(total) in printed  # the interval of the counted cells, as written to the summary
    assert f"Warning: Only {cells} white cell" in printed and str(MIN_DIFFERENTIAL_CELLS) in printed
    report = (out / "report.html").read_text()
    assert "95% CI {:.1f}-{:.1f}%".format(*total["blast_ci95_percent"]) in report


def test_blast_percentage_is_of_white_cells_only():
    from napari_hematology.core.cells.analysis import summarize

    labels = pd.Series(["blast", "neutrophil", "other", "erythroblast", "lymphocyte", "blast"])
    summary = summarize(labels, ["neutrophil", "lymphocyte", "blast", "erythroblast", "other"])
    assert summary["cells"] == 4 and summary["not_in_differential"] == 2
    assert summary["blast_percent"] == 50.0 and summary["counts"]["other"] == 1
    assert summarize(pd.Series(["other"]), ["blast", "other"])["blast_percent"] is None
