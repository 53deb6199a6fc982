"""Jobs on Dask: a light local cluster, or an existing ``dask.distributed`` scheduler.

Field batches (:func:`napari_hematology.core.cells.batch.analyze_paths`) and whole slides
(:func:`napari_hematology.core.whole_slide.many.analyze_slides`) send one job per file. A job that
raises :class:`~napari_hematology.core.errors.InputError` is that file's reason to be skipped; the others
go on. When a worker dies, Dask runs its job again on another worker.

A cluster across machines is two commands (the files and model folders must be at the same paths on
every machine)::

    dask scheduler                                   # prints tcp://HOST:8786
    dask worker tcp://HOST:8786 --nthreads 1 --nworkers 2
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari_hematology.core.errors import Cancelled, InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, no_progress

SCHEDULER_TIMEOUT_S = 10
LOCAL_WORKERS = 2


def run_jobs(
    function: Callable[..., Any],
    jobs: list[dict[str, Any]],
    scheduler: str | None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    message: str = "analysing",
) -> list[Any]:
    """Run ``function(**job)`` for every job on Dask, in the jobs' order.

    Args:
        function: A module-level (picklable) function.
        jobs: Keyword arguments of each call.
        scheduler: None starts a local cluster of up to :data:`LOCAL_WORKERS` one-thread processes for
            the run; otherwise the address of a running scheduler (``tcp://host:8786``).
        progress: Progress callback (one step per finished job).
        should_stop: Cancellation callback; running jobs are cancelled.
        message: Progress message.

    Returns:
        Each job's result, or the :class:`InputError` that made it skip.

    Raises:
        InputError: The scheduler cannot be reached.
        Cancelled: ``should_stop`` asked to stop.

    """
    from dask.distributed import LocalCluster, as_completed

    report = progress or no_progress
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=min(LOCAL_WORKERS, len(jobs)),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = connect(cluster if cluster is not None else scheduler)
    try:
        futures = [client.submit(_input_errors_returned, function, pure=False, **job) for job in jobs]
        order = {future.key: index for index, future in enumerate(futures)}
        results: list[Any] = [None] * len(jobs)
        report(0, len(jobs), message)
        for done, future in enumerate(as_completed(futures, loop=client.loop), start=1):
            if should_stop is not None and should_stop():
                client.cancel(futures)
                raise Cancelled("Cancelled by the user.")
            results[order[future.key]] = future.result()
            report(done, len(jobs), message)
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _input_errors_returned(function: Callable[..., Any], **job: Any) -> Any:
    """``function(**job)``, or the InputError that skips the job, returned rather than raised.

    A raised error would be logged by the worker as a failed task with its traceback: a file that is
    skipped for a reason the user is told is not a failure.
    """
    try:
        return function(**job)
    except InputError as error:
        return error


def connect(address):
    """A Dask client of the scheduler at ``address`` (or of a local cluster).

    The client is not made Dask's default, so nothing else in the process starts sending work to a
    cluster that goes away with the run.

    Raises:
        InputError: The scheduler cannot be reached; the message says what to check.

    """
    from dask.distributed import Client

    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(
            f"Cannot reach the Dask scheduler at {address!r} ({error}). Check the address "
            "(tcp://host:8786) and that the scheduler is running, or leave out --scheduler to work "
            "on this computer."
        ) from error


def one_thread() -> None:
    """Keep torch to one thread in this worker process: workers are the parallelism."""
    import torch

    torch.set_num_threads(1)
