"""Whole slides tile by tile: cells of one pass, cancel and resume, sampling, regions, reading area, CLI."""

import json
import os
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from blast_helpers import FakeClassifier
from conftest import run_fresh_python
from slide_helpers import mosaic, synthetic_smear, write_ome_pyramid

from napari_hematology.cli import main
from napari_hematology.core.cells.analysis import LazyClassifier
from napari_hematology.core.cells.segmentation import SegmentationConfig, segment_field
from napari_hematology.core.errors import Cancelled, InputError, ModelFileError
from napari_hematology.core.io import SmearImage, read_image
from napari_hematology.core.whole_slide import analysis as whole_slide
from napari_hematology.core.whole_slide import worker as slide_worker
from napari_hematology.core.whole_slide.analysis import WholeSlideConfig, analyze_slide
from napari_hematology.core.whole_slide.geojson import geojson_to_cells, read_geojson
from napari_hematology.core.whole_slide.reading_area import find_reading_area

TILED = SegmentationConfig(tile_size=1024, tile_overlap=256)
REFERENCE_UM = SegmentationConfig().pixel_size_um  # the bundled fields' pixel size: segmented as they are
COMPARED = ["cell_id", "centroid_y", "centroid_x", "label"]
CORNER = (1400.0, 1900.0)  # in the core of the last tile: rows 1024-1440, columns 1536-1920


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_ome_pyramid(tmp_path_factory.mktemp("slide") / "smear.ome.tif", mosaic(1440, 1920), levels=3,
                             pixel_size_um=REFERENCE_UM)


@pytest.fixture(scope="module")
def full_run(slide_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    updates = []
    result = analyze_slide(read_image(slide_path), out, FakeClassifier(blast_above=200),
                           config=WholeSlideConfig(TILED), on_tile=updates.append)
    return result, updates


def _stopping_after(tiles: int):
    seen = []
    return seen.append, lambda: len(seen) >= tiles


def test_tiles_find_the_cells_of_one_pass_once_each(slide_path, full_run):
    result, _ = full_run
    single = segment_field(np.asarray(read_image(slide_path).data)).cells
    assert len(result.cells) == len(single) > 10
    found = result.cells[["centroid_y", "centroid_x"]].to_numpy()
    for y, x in single[["centroid_y", "centroid_x"]].to_numpy():
        assert np.hypot(*(found - [y, x]).T).min() < 3
    gaps = np.hypot(*(found[:, None] - found[None]).transpose(2, 0, 1)) + np.eye(len(found)) * 1e9
    assert gaps.min() > 20  # no cell counted twice
    assert list(result.cells["cell_id"]) == list(range(1, len(found) + 1))


def test_outputs_and_live_updates(full_run):
    result, updates = full_run
    assert [update.done for update in updates] == list(range(1, len(updates) + 1))
    assert updates[-1].done == updates[-1].total == result.summary["tiles_read"]
    assert sum(len(update.cells) for update in updates) == len(result.cells)
    assert updates[-1].summary["cells"] == result.summary["cells"] == len(result.cells)
    assert set(result.cells["label"]) <= {"blast", "neutrophil"} and result.summary["counts"]["blast"] > 0
    saved = json.loads(result.outputs["summary"].read_text())
    assert saved["pixel_size_um"] == pytest.approx(REFERENCE_UM) and saved["format"] == "OME-TIFF"
    assert saved["pixel_size_source"] == "metadata" and "OME PhysicalSizeX" in saved["notes"][0]
    detections = geojson_to_cells(read_geojson(result.outputs["geojson"]))
    assert list(detections["label"]) == list(result.cells["label"])
    assert not whole_slide.has_checkpoint(result.outputs["cells"].parent, "smear")


def test_a_cancelled_run_keeps_its_cells_and_resumes_to_the_same_result(slide_path, full_run, tmp_path):
    expected = full_run[0].cells
    image = read_image(slide_path)
    on_tile, stop = _stopping_after(3)
    with pytest.raises(Cancelled):
        analyze_slide(image, tmp_path, FakeClassifier(blast_above=200), config=WholeSlideConfig(TILED),
                      on_tile=on_tile, should_stop=stop)
    assert whole_slide.has_checkpoint(tmp_path, "smear")
    kept = pd.read_csv(tmp_path / "smear_cells.csv")
    assert 0 < len(kept) < len(expected)
    replayed = []
    resumed = analyze_slide(image, tmp_path, FakeClassifier(blast_above=200), config=WholeSlideConfig(TILED),
                            resume=True, on_tile=replayed.append)
    assert len(replayed[0].cells) == len(kept)  # the cells found before are shown first
    pd.testing.assert_frame_equal(resumed.cells[COMPARED], expected[COMPARED], check_dtype=False)


def test_the_run_starts_at_the_tile_nearest_the_view_and_a_resume_keeps_that_start(slide_path, full_run,
                                                                                   tmp_path):
    run = partial(analyze_slide, read_image(slide_path), classifier=FakeClassifier(blast_above=200),
                  config=WholeSlideConfig(TILED))
    on_tile, stop = _stopping_after(1)
    with pytest.raises(Cancelled):
        run(tmp_path / "cut", start_near=CORNER, on_tile=on_tile, should_stop=stop)
    first = pd.read_csv(tmp_path / "cut" / "smear_cells.csv")
    assert len(first) and (first["centroid_y"] >= 1024).all() and (first["centroid_x"] >= 1536).all()
    resumed = run(tmp_path / "cut", start_near=(0.0, 0.0), resume=True)  # the view moved meanwhile
    uninterrupted = run(tmp_path / "whole", start_near=CORNER)
    pd.testing.assert_frame_equal(resumed.cells[COMPARED], uninterrupted.cells[COMPARED], check_dtype=False)
    position = ["centroid_y", "centroid_x"]
    assert sorted(map(tuple, resumed.cells[position].to_numpy())) == sorted(
        map(tuple, full_run[0].cells[position].to_numpy())
    )


def test_a_worker_process_finds_the_same_cells_relays_tiles_cancels_and_errors(slide_path, full_run,
                                                                               tmp_path):
    worker = slide_worker.SlideWorker(classifier=FakeClassifier(blast_above=200))
    threads = set()
    on_tile, stop = _stopping_after(1)
    try:
        result = worker.run(slide_path, tmp_path / "all", reading_area=False, config=WholeSlideConfig(TILED),
                            on_tile=lambda update: threads.add(threading.get_ident()))
        assert worker.pid not in (None, os.getpid())
        with pytest.raises(Cancelled):
            worker.run(slide_path, tmp_path / "cut", reading_area=False, config=WholeSlideConfig(TILED),
                       on_tile=on_tile, should_stop=stop)
        with pytest.raises(InputError, match="no such file"):
            worker.run(tmp_path / "missing.svs", tmp_path / "none")
    finally:
        worker.close()
    assert worker.pid is None and threads == {threading.get_ident()}
    pd.testing.assert_frame_equal(result.cells[COMPARED], full_run[0].cells[COMPARED], check_dtype=False)
    assert whole_slide.has_checkpoint(tmp_path / "cut", "smear")


def test_cells_found_before_the_classifier_loads_come_first_then_classified(slide_path, full_run, tmp_path):
    events = []

    def load():
        events.append("load")
        return FakeClassifier(blast_above=200)

    found, updates = [], []

    def on_found(cells):
        events.append("found")
        found.append(cells)

    result = analyze_slide(read_image(slide_path), tmp_path, LazyClassifier(load),
                           config=WholeSlideConfig(TILED), on_found=on_found, on_tile=updates.append)
    assert events == ["found", "load"] and "label" not in found[0] and len(found[0]) > 0
    first = next(update.cells for update in updates if len(update.cells))
    position = ["centroid_y", "centroid_x"]
    np.testing.assert_allclose(found[0][position].to_numpy(float), first[position].to_numpy(float))
    pd.testing.assert_frame_equal(result.cells[COMPARED], full_run[0].cells[COMPARED], check_dtype=False)


def test_a_classifier_that_fails_to_load_ends_the_run_with_its_error(slide_path, tmp_path):
    def load():
        raise ModelFileError("model.safetensors is not a classifier of this plugin")

    with pytest.raises(ModelFileError, match="not a classifier"):
        analyze_slide(read_image(slide_path), tmp_path, LazyClassifier(load),
                      config=WholeSlideConfig(TILED))


def test_segmenting_a_tile_in_the_worker_process_imports_no_torch():
    script = (
        "import sys\n"
        "import numpy as np\n"
        "import napari_hematology.core.whole_slide.worker\n"
        "from napari_hematology.core.cells.segmentation import segment_field\n"
        "field = np.full((256, 256, 3), 235, np.uint8)\n"
        "field[100:130, 100:130] = (90, 60, 150)\n"
        "segment_field(field)\n"
        "print('torch' in sys.modules)\n"
    )
    assert run_fresh_python(script).split() == ["False"]


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_handed_back_on_linux():
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 1024  # 64 MiB in blocks below the mmap threshold: on the heap, like tiles
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    pinned = libc.malloc(size)  # keeps the heap's top in use, so freeing the rest cannot shrink it
    for block in blocks:
        libc.free(block)
    kept = _resident_bytes()
    try:
        assert slide_worker.release_freed_memory()
        assert kept - _resident_bytes() > 48 * 2**20
    finally:
        libc.free(pinned)


def test_resuming_with_other_settings_is_refused(slide_path, tmp_path):
    image = read_image(slide_path)
    on_tile, stop = _stopping_after(1)
    with pytest.raises(Cancelled):
        analyze_slide(image, tmp_path, FakeClassifier(), config=WholeSlideConfig(TILED), on_tile=on_tile,
                      should_stop=stop)
    with pytest.raises(InputError, match="another slide, region or settings"):
        analyze_slide(image, tmp_path, FakeClassifier(), config=WholeSlideConfig(TILED, max_white_cells=9),
                      resume=True)


def test_a_fixed_differential_stops_at_that_many_cells(slide_path, tmp_path):
    result = analyze_slide(read_image(slide_path), tmp_path, FakeClassifier(),
                           config=WholeSlideConfig(TILED, max_white_cells=5))
    assert len(result.cells) == 5 and list(result.cells["cell_id"]) == [1, 2, 3, 4, 5]
    assert result.summary["tiles_read"] < result.summary["tiles_planned"]


def test_regions_limit_the_cells_counted(slide_path, full_run, tmp_path):
    left = np.array([[0.0, 0.0], [0.0, 900.0], [1440.0, 900.0], [1440.0, 0.0]])
    result = analyze_slide(read_image(slide_path), tmp_path, FakeClassifier(), regions=[left],
                           config=WholeSlideConfig(TILED))
    assert 0 < len(result.cells) < len(full_run[0].cells)
    assert (result.cells["centroid_x"] < 900).all()
    everything_left = full_run[0].cells["centroid_x"] < 900
    assert len(result.cells) == int(everything_left.sum())


def test_reading_area_is_the_monolayer_between_thick_part_and_feathered_edge():
    smear = synthetic_smear(height=1200, width=3000)
    area = find_reading_area(SmearImage([smear], pixel_size_um=1.0))
    assert area.block_px == 100 and len(area.polygons) == 1
    columns = area.mask.mean(axis=0)
    assert (columns[:10] == 0).all() and (columns[20:] == 0).all()  # thick third, feathered third
    assert columns[10:20].mean() > 0.8
    xs = area.polygons[0][:, 1]
    assert xs.min() == pytest.approx(1000, abs=100) and xs.max() == pytest.approx(2000, abs=100)


def test_reading_area_without_pixel_size_says_how_it_measured():
    area = find_reading_area(SmearImage([synthetic_smear(height=600, width=1500)]))
    assert any("no pixel size" in note for note in area.notes)
    assert area.mask[:, area.mask.shape[1] // 2].any()


def test_cli_slide_info_analyze_and_export(slide_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(whole_slide, "get_classifier", lambda model_dir=None: FakeClassifier())
    assert main(["slide", "info", str(slide_path)]) == 0
    shown = capsys.readouterr().out
    assert f"OME-TIFF via tifffile; levels 1920x1440, 960x720, 480x360; {REFERENCE_UM:.4g} µm/pixel" in shown
    assert main(["slide", "analyze", str(slide_path), "--out", str(tmp_path), "--whole-slide",
                 "--cells", "4"]) == 0
    assert "4 white cells in whole slide" in capsys.readouterr().out
    cells = pd.read_csv(tmp_path / "smear_cells.csv")
    assert len(cells) == 4
    assert main(["slide", "export-geojson", str(tmp_path / "smear_cells.csv"), "--out",
                 str(tmp_path / "again.geojson")]) == 0
    assert len(read_geojson(tmp_path / "again.geojson")["features"]) == 4
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    assert main(["slide", "analyze", str(slide_path), "--out", str(tmp_path), "--region",
                 str(tmp_path / "empty.geojson")]) == 2
    assert "holds no polygon" in capsys.readouterr().err
