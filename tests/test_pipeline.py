"""The analysis pipeline and the ``segment`` / ``analyze`` commands."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
from blast_helpers import CLASSES, FakeClassifier, background_only

from napari_hematology.cli import main
from napari_hematology.core.cells.analysis import analyze_image, call_classes, cut_crops, summarize
from napari_hematology.core.cells.batch import analyze_paths, unique_stems
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_labels

CONTRACT = [
    "cell_id",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "label",
    "blast_probability",
]


def test_analyze_paths_writes_labels_tables_summary_and_report(sample_field_path, tmp_path):
    classifier = FakeClassifier()
    summary = analyze_paths([sample_field_path], tmp_path, scheduler="synchronous", classifier=classifier)
    stem = sample_field_path.stem
    cells = pd.read_csv(tmp_path / f"{stem}_cells.csv")
    labels = read_labels(tmp_path / f"{stem}_labels.tif")
    assert set(CONTRACT + ["area", "nucleus_area", "nc_ratio", "prob_blast"]) <= set(cells.columns)
    assert len(cells) >= 1 and set(np.unique(labels)) == {0, *cells["cell_id"]}
    assert (cells["label"] == "blast").all()  # the fake calls every cell a blast at p = 0.8
    assert summary["total"]["cells"] == len(cells)
    assert summary["total"]["blast_percent"] == 100.0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    report = (tmp_path / "report.html").read_text()
    assert f"{stem}_overlay.png" in report and (tmp_path / f"{stem}_overlay.png").is_file()


def test_image_without_white_cells_gives_empty_results(tmp_path):
    iio.imwrite(tmp_path / "empty.png", background_only())
    summary = analyze_paths(
        [tmp_path / "empty.png"], tmp_path / "out", scheduler="synchronous", classifier=FakeClassifier()
    )
    cells = pd.read_csv(tmp_path / "out" / "empty_cells.csv")
    assert cells.empty and set(CONTRACT) <= set(cells.columns)
    assert summary["total"] == {
        "images": 1,
        "cells": 0,
        "counts": dict.fromkeys(CLASSES, 0),
        "blast_percent": None,
    }
    assert "no white cells" in (tmp_path / "out" / "report.html").read_text()


def test_16_bit_tiff_is_analysed(sample_field, tmp_path):
    tifffile.imwrite(tmp_path / "field16.tif", sample_field.astype(np.uint16) * 257)
    summary = analyze_paths(
        [tmp_path], tmp_path / "out", scheduler="synchronous", classifier=FakeClassifier()
    )
    assert summary["total"]["cells"] >= 1


def test_grayscale_file_is_refused_by_the_cli(tmp_path, capsys):
    iio.imwrite(tmp_path / "gray.png", np.full((64, 64), 100, np.uint8))
    assert main(["segment", str(tmp_path / "gray.png"), "--out", str(tmp_path / "out")]) == 2
    assert "grayscale" in capsys.readouterr().err


def test_missing_input_and_bad_model_folder_are_clear_errors(sample_field_path, tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    code = main(["segment", str(sample_field_path), "--out", str(tmp_path), "--model", str(tmp_path)])
    assert code == 2
    assert "model folder" in capsys.readouterr().err


def test_blast_threshold_recalls_classes_without_recomputing():
    cells = pd.DataFrame({f"prob_{name}": [0.02] * 3 for name in CLASSES})
    cells["prob_lymphocyte"] = [0.5, 0.3, 0.88]
    cells["blast_probability"] = cells["prob_blast"] = [0.4, 0.6, 0.02]
    assert list(call_classes(cells, CLASSES, 0.5)) == ["lymphocyte", "blast", "lymphocyte"]
    assert list(call_classes(cells, CLASSES, 0.3)) == ["blast", "blast", "lymphocyte"]
    summary = summarize(call_classes(cells, CLASSES, 0.3), CLASSES)
    assert summary["counts"]["blast"] == 2 and summary["blast_percent"] == pytest.approx(66.67)
    assert summarize(pd.Series([], dtype=object), CLASSES)["blast_percent"] is None


def test_crops_are_centred_and_clipped_at_the_border(sample_field):
    cells = pd.DataFrame(
        {
            "centroid_y": [5.0],
            "centroid_x": [100.0],
            "bbox_y0": [0],
            "bbox_x0": [80],
            "bbox_y1": [30],
            "bbox_x1": [120],
        }
    )
    (crop,) = cut_crops(sample_field, cells)
    assert crop.shape[0] < crop.shape[1] == 53
    tiny = cells.assign(centroid_y=100.0, bbox_y0=98, bbox_y1=102, bbox_x0=98, bbox_x1=102)
    (small_crop,) = cut_crops(sample_field, tiny)
    assert small_crop.shape[:2] == (33, 33)


def test_analyze_image_classifies_each_cell_once(sample_field):
    classifier = FakeClassifier(blast_above=10_000)
    analysis = analyze_image(sample_field, classifier)
    assert classifier.calls == 1
    assert (analysis.cells["label"] != "blast").all()
    assert analysis.cells["blast_probability"].between(0, 1).all()


def test_duplicate_stems_get_distinct_outputs(tmp_path):
    assert unique_stems([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]) == ["x", "x-2"]


def test_segment_command_with_shipped_classifier(sample_field_path, tmp_path):
    from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR

    if not (SHIPPED_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("shipped classifier weights not built yet")
    assert main(["segment", str(sample_field_path), "--out", str(tmp_path)]) == 0
    cells = pd.read_csv(tmp_path / f"{sample_field_path.stem}_cells.csv")
    assert list(cells.columns[: len(CONTRACT) - 2]) == CONTRACT[:-2]
    assert cells["label"].isin(CLASSES).all()


def test_folder_runs_on_an_existing_dask_cluster(sample_field_path, tmp_path):
    from dask.distributed import LocalCluster

    from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR

    if not (SHIPPED_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("shipped classifier weights not built yet")
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(sample_field_path.read_bytes())
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = analyze_paths([folder], tmp_path / "out", scheduler=cluster.scheduler_address)
    assert [item["cells_table"] for item in summary["images"]] == ["a_cells.csv", "b_cells.csv"]
    assert summary["images"][0]["cells"] == summary["images"][1]["cells"] >= 1


def test_unknown_scheduler_address_is_an_input_error(sample_field_path, tmp_path):
    with pytest.raises(InputError, match="scheduler"):
        analyze_paths([sample_field_path, sample_field_path], tmp_path, scheduler="nonsense://nowhere")


def test_tiled_analysis_writes_labels_tile_by_tile(sample_field_path, tmp_path):
    from napari_hematology.core.cells.segmentation import SegmentationConfig

    config = SegmentationConfig(tile_size=400, tile_overlap=150)  # the 640 x 480 field is cut into tiles
    summary = analyze_paths(
        [sample_field_path], tmp_path, scheduler="synchronous", classifier=FakeClassifier(), config=config
    )
    labels = read_labels(tmp_path / f"{sample_field_path.stem}_labels.tif")
    cells = pd.read_csv(tmp_path / f"{sample_field_path.stem}_cells.csv")
    assert labels.shape == (480, 640)
    assert set(np.unique(labels)) == {0, *cells["cell_id"]} and summary["total"]["cells"] == len(cells) >= 1
    assert not list(tmp_path.glob(".*"))  # the temporary chunked labels are removed


def test_scale_option_is_checked(sample_field_path, tmp_path, capsys):
    assert main(["segment", str(sample_field_path), "--out", str(tmp_path), "--scale", "0"]) == 2
    assert "Scale factor" in capsys.readouterr().err
