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
        "not_in_differential": 0,
        "left_out": {},
        "counts": dict.fromkeys(CLASSES, 0),
        "blast_percent": None,
        "blast_ci95_percent": None,
        "warnings": ["No white cells found: there is no differential."],
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


def test_segment_command_with_shipped_classifier(sample_field_path, tmp_path, shipped_weights):
    assert main(["segment", str(sample_field_path), "--out", str(tmp_path)]) == 0
    cells = pd.read_csv(tmp_path / f"{sample_field_path.stem}_cells.csv")
    labels = read_labels(tmp_path / f"{sample_field_path.stem}_labels.tif")
    assert list(cells.columns[: len(CONTRACT) - 2]) == CONTRACT[:-2]
    assert cells["label"].isin(CLASSES).all()
    assert set(np.unique(labels)) == {0, *cells["cell_id"]}
    for cell in cells.itertuples():  # each row describes its own outline
        assert labels[round(cell.centroid_y), round(cell.centroid_x)] == cell.cell_id
    assert set(cells["quality"]) <= {"ok", "cut by the image edge", "crop mostly outside the image",
                                     "nucleus not found", "out of focus"}


def test_folder_runs_on_an_existing_dask_cluster(sample_field_path, tmp_path, shipped_weights):
    from dask.distributed import LocalCluster

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


# ------------------------------------------------------------------- magnification and unreadable files


def truncated_copy(source, target):
    """Write the first third of ``source`` to ``target``: a JPEG cut short, as by a failed transfer."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 3])
    return target


def test_one_unreadable_field_is_skipped_and_named(sample_field_path, tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample_field_path.read_bytes())
    truncated_copy(sample_field_path, folder / "b.jpg")
    summary = analyze_paths([folder], tmp_path / "out", scheduler="synchronous", classifier=FakeClassifier())
    assert [item["cells_table"] for item in summary["images"]] == ["a_cells.csv"]
    (skipped,) = summary["skipped"]
    assert skipped["image"].endswith("b.jpg") and "cannot be read" in skipped["reason"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == [skipped]


def test_segment_cli_exits_3_and_names_the_skipped_file(sample_field_path, tmp_path, capsys):
    folder = tmp_path / "fields"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(sample_field_path.read_bytes())
    iio.imwrite(folder / "gray.png", np.full((64, 64), 100, np.uint8))
    code = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 3
    captured = capsys.readouterr()
    assert "good.jpg" in captured.out and "red cells" in captured.out
    assert "skipped" in captured.err and "gray.png" in captured.err and "grayscale" in captured.err
    assert "1 of 2 file(s) skipped" in captured.err
    assert (tmp_path / "out" / "good_cells.csv").is_file()


def test_pixel_size_is_found_and_reported(sample_field_path, tmp_path):
    summary = analyze_paths(
        [sample_field_path], tmp_path, scheduler="synchronous", classifier=FakeClassifier()
    )
    (item,) = summary["images"]
    assert item["pixel_size_source"] == "red-cell ruler"
    assert 0.05 < item["pixel_size_um"] < 0.1 and "red cells" in item["pixel_size_note"]
    given = analyze_paths(
        [sample_field_path], tmp_path, scheduler="synchronous", classifier=FakeClassifier(), pixel_size_um=0.1
    )
    assert (given["images"][0]["pixel_size_source"], given["images"][0]["pixel_size_um"]) == ("user", 0.1)


def test_half_magnification_field_is_analysed_without_a_scale(sample_field):
    from napari_hematology.core.cells.segmentation import resize_rgb

    classifier = FakeClassifier()
    full = analyze_image(sample_field, classifier)
    half = analyze_image(resize_rgb(sample_field, 0.5), classifier)
    assert half.pixel_size.source == "red-cell ruler"
    assert half.pixel_size.um_per_px == pytest.approx(2 * full.pixel_size.um_per_px, rel=0.25)
    assert len(half.cells) == len(full.cells) >= 1
    assert half.cells.attrs["pixel_size_um"] == half.pixel_size.um_per_px
    assert half.cells.attrs["pixel_size_source"] == "red-cell ruler"


def test_field_without_red_cells_falls_back_with_a_warning(tmp_path, capsys):
    rng = np.random.default_rng(2)
    iio.imwrite(tmp_path / "bare.png", np.clip(rng.normal(220, 3, (300, 400, 3)), 0, 255).astype(np.uint8))
    assert main(["segment", str(tmp_path / "bare.png"), "--out", str(tmp_path / "out")]) == 0
    warning = capsys.readouterr().err
    assert "Warning: bare.png: no red cells to measure" in warning and "default pixel size" in warning
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"][0]["pixel_size_source"] == "default"


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--pixel-size", "12"], "not plausible"), (["--pixel-size", "0.001"], "not plausible")],
)
def test_absurd_pixel_size_is_a_clear_error(sample_field_path, tmp_path, capsys, option, message):
    assert main(["segment", str(sample_field_path), "--out", str(tmp_path), *option]) == 2
    assert message in capsys.readouterr().err


def test_pixel_size_and_scale_cannot_be_combined(sample_field_path, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(sample_field_path), "--out", str(tmp_path), "--scale", "2",
              "--pixel-size", "0.1"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_analyze_sends_every_detected_cell_to_a_review_project(sample_field_path, tmp_path):
    from napari_hematology.core.labels.store import AnnotationStore

    project = tmp_path / "review.sqlite"
    out = tmp_path / "out"
    assert main(["analyze", str(sample_field_path), "--out", str(out), "--project", str(project)]) == 0
    cells = pd.read_csv(tmp_path / "out" / f"{sample_field_path.stem}_cells.csv")
    with AnnotationStore(project) as store:
        stored = store.cells()
        labels = store.current_labels()
    assert len(cells) >= 1 and len(stored) == len(cells)
    assert sorted(labels["label"]) == sorted(cells["label"])
    assert sorted(stored["x"].round(1)) == sorted(cells["centroid_x"].round(1))
