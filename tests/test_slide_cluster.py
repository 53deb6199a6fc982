"""Several slides on a Dask cluster: the cells of a local run, and a lost worker loses no finished tile."""

import json
import os
import signal
import threading
import time

import dask
import pandas as pd
import pytest
from slide_helpers import mosaic, write_ome_pyramid

from napari_hematology.cli import main
from napari_hematology.core.cells.segmentation import SegmentationConfig
from napari_hematology.core.errors import InputError
from napari_hematology.core.whole_slide.analysis import WholeSlideConfig
from napari_hematology.core.whole_slide.many import analyze_slides

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("dask.distributed")

TILED = WholeSlideConfig(SegmentationConfig(tile_size=1024, tile_overlap=256), pixel_size_um=0.1)
COMPARED = ["cell_id", "tile", "centroid_y", "centroid_x", "label", "blast_probability"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    base = mosaic(1440, 2400)
    return [write_ome_pyramid(folder / f"{name}.ome.tif", image, levels=2, pixel_size_um=None)
            for name, image in (("first", base), ("second", base[:, ::-1].copy()))]


@pytest.fixture(scope="module")
def local_run(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    outcomes = analyze_slides(slides, out, scheduler="synchronous", reading_area=False, config=TILED)
    return out, outcomes


def _cells(folder, stem):
    return pd.read_csv(folder / f"{stem}_cells.csv").sort_values("cell_id").reset_index(drop=True)


def _kill_a_worker_after_its_first_tile(address: str, out_dir, killed: list) -> None:
    """Kill a busy worker once every slide has finished tiles and none is complete."""
    client = distributed.Client(address, timeout=30, set_as_default=False)
    try:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            states = []
            for checkpoint in out_dir.glob("*_checkpoint.json"):
                try:
                    states.append(json.loads(checkpoint.read_text()))
                except (OSError, ValueError):
                    break
            if len(states) == 2 and all(state["done"] and not state["complete"] for state in states):
                busy = [worker for worker, tasks in client.processing().items() if tasks]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                    return
            time.sleep(0.02)
    finally:
        client.close()


def test_two_workers_give_the_local_cells_and_a_killed_worker_repeats_no_finished_tile(
    slides, local_run, tmp_path
):
    local_out, local_outcomes = local_run
    assert all(outcome["cells"] > 10 for outcome in local_outcomes)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        killed: list[str] = []
        killer = threading.Thread(target=_kill_a_worker_after_its_first_tile,
                                  args=(cluster.scheduler_address, tmp_path, killed))
        killer.start()
        outcomes = analyze_slides(slides, tmp_path, scheduler=cluster.scheduler_address,
                                  reading_area=False, config=TILED)
        killer.join()
    assert dask.config.get("scheduler", None) is None  # no client left behind as Dask's default
    assert killed, "no worker was killed mid-slide"
    resumed = [outcome["resumed_after_tiles"] for outcome in outcomes if outcome["resumed_after_tiles"]]
    assert resumed and resumed[0][0] >= 1  # the second try started after the finished tiles
    for outcome, local in zip(outcomes, local_outcomes, strict=True):
        assert outcome["counts"] == local["counts"]
        assert outcome["tiles_read"] == outcome["tiles_planned"] == local["tiles_read"]
    for stem in ("first", "second"):
        pd.testing.assert_frame_equal(_cells(tmp_path, stem)[COMPARED], _cells(local_out, stem)[COMPARED])


def test_cli_runs_several_slides_and_refuses_two_with_one_name(slides, local_run, tmp_path, capsys):
    assert main(["slide", "analyze", *map(str, slides), "--out", str(tmp_path), "--whole-slide",
                 "--cells", "5", "--pixel-size", "0.1"]) == 0
    shown = capsys.readouterr().out
    assert "first.ome.tif: 5 white cells" in shown and "second.ome.tif: 5 white cells" in shown
    with pytest.raises(InputError, match="Several slides are named first"):
        analyze_slides([slides[0], slides[0]], tmp_path, scheduler="synchronous")


def test_an_unreachable_scheduler_is_one_clear_error(slides, tmp_path):
    with pytest.raises(InputError, match="Cannot reach the Dask scheduler"):
        analyze_slides(slides, tmp_path, scheduler="tcp://127.0.0.1:9")


def test_a_skipped_job_is_returned_not_logged_as_a_failed_task(capfd):
    from napari_hematology.core.cells.magnification import check_pixel_size
    from napari_hematology.core.cluster import run_jobs

    jobs = [{"um_per_px": value, "origin": "test"} for value in (0.07, 100.0, 0.25, 200.0)]
    results = run_jobs(check_pixel_size, jobs, scheduler=None)
    assert results[0] == 0.07 and results[2] == 0.25
    assert all(isinstance(results[n], InputError) and "not plausible" in str(results[n]) for n in (1, 3))
    assert "Compute Failed" not in capfd.readouterr().err, "a skipped file is not a worker failure"
