"""Many slides at once: one Dask job per slide, each resumable from its own checkpoint.

Every slide's job runs :func:`~napari_hematology.core.whole_slide.analysis.analyze_slide_file` with
``resume=True`` into the shared output folder, so when a worker dies Dask's second try of that slide
continues after the last finished tile (``resumed_after_tiles`` in the slide's summary) and repeats none.
A fresh run (``resume=False``) first clears the earlier outputs of its slides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_hematology.core.cluster import one_thread, run_jobs
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, no_progress
from napari_hematology.core.whole_slide.analysis import WholeSlideConfig, analyze_slide_file
from napari_hematology.core.whole_slide.outputs import slide_outputs, slide_stem


def analyze_slides(
    paths: list[str | Path],
    out_dir: str | Path,
    *,
    scheduler: str | None = None,
    model_dir: str | Path | None = None,
    regions: list[np.ndarray] | None = None,
    reading_area: bool = True,
    config: WholeSlideConfig | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> list[dict[str, Any] | InputError]:
    """Analyse slides, one job per slide, here or on a Dask cluster.

    Args:
        paths: Slide files; their names (without the format's suffix) must differ, since each slide's
            outputs are named after it in ``out_dir``.
        out_dir: Output folder, on storage every worker sees at the same path.
        scheduler: ``"synchronous"``: one slide after the other in this process; None: a local cluster
            of two one-thread workers; otherwise the address of a Dask scheduler (``tcp://host:8786``).
        model_dir: Classifier folder (the same path on every worker); None for the shipped weights.
        regions: Polygons read in every slide; None uses each slide's reading area (``reading_area``).
        reading_area: See :func:`~napari_hematology.core.whole_slide.analysis.analyze_slide_file`.
        config: Run settings of every slide.
        resume: Continue the unfinished runs found in ``out_dir``; False starts every slide afresh.
        progress: Progress callback (one step per finished slide).
        should_stop: Cancellation callback; finished tiles stay on disk for ``resume``.

    Returns:
        Each slide's summary (as in ``<stem>_summary.json``), or the error that made it skip.

    Raises:
        InputError: Two slides share a name, or the scheduler cannot be reached.

    """
    paths = [Path(path) for path in paths]
    _check_distinct_names(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        _clear_outputs(paths, out_dir)
    jobs = [
        dict(path=path, out_dir=out_dir, model_dir=model_dir, regions=regions, reading_area=reading_area,
             config=config or WholeSlideConfig())
        for path in paths
    ]
    if scheduler != "synchronous":
        return run_jobs(_slide_job, jobs, scheduler, progress, should_stop, "analysing slides")
    report = progress or no_progress
    outcomes: list[dict[str, Any] | InputError] = []
    for done, job in enumerate(jobs):
        check_cancel(should_stop)
        report(done, len(jobs), "analysing slides")
        try:
            outcomes.append(_analyze_slide(**job))
        except InputError as error:
            outcomes.append(error)
    report(len(jobs), len(jobs), "analysing slides")
    return outcomes


def _slide_job(**job: Any) -> dict[str, Any]:
    """One slide on a Dask worker, with one torch thread: the workers are the parallelism."""
    one_thread()
    return _analyze_slide(**job)


def _analyze_slide(**job: Any) -> dict[str, Any]:
    """One slide, resuming its own checkpoint, so a second try repeats no finished tile.

    The slide's lazy (Dask) levels are read here, not sent on to a cluster.
    """
    import dask

    with dask.config.set(scheduler="synchronous"):
        return analyze_slide_file(**job, resume=True).summary


def _check_distinct_names(paths: list[Path]) -> None:
    stems = [slide_stem(path) for path in paths]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise InputError(
            f"Several slides are named {', '.join(repeated)}; their outputs would overwrite each other. "
            "Analyse them into separate --out folders."
        )


def _clear_outputs(paths: list[Path], out_dir: Path) -> None:
    for path in paths:
        for output in slide_outputs(out_dir, slide_stem(path)).values():
            output.unlink(missing_ok=True)
