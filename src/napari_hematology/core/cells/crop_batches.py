"""Read single-cell crop files and normalise them for the classifier, in batches, on background threads.

Large batches may be normalised in worker processes instead: the normaliser is many small numpy and scipy
calls that hold Python's lock, so threads share one core between them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_hematology.core.cells.crops import (
    CONTEXT,
    CROP_SIZE,
    crop_to_rgb8,
    normalise_crop_checked,
    read_crop,
)
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

READ_THREADS = 2
BATCH_SIZE = 256  # crops per batch read, and per forward pass of the classifier
FILES_PER_PROCESS_TASK = 32  # files a worker process normalises per request (fewer round trips)


class CropChunk(NamedTuple):
    """Normalised crops and the normaliser's quality of each (``ok`` or the reason it is not)."""

    crops: np.ndarray
    quality: list[str]


def prepare_crop(
    crop: Any, name: str, size: int = CROP_SIZE, context: float = CONTEXT
) -> tuple[np.ndarray, str]:
    """Check one single-cell crop, convert it to 8-bit RGB and normalise it for the classifier.

    Args:
        crop: Image array (Y, X, 3), (Y, X, 4), 16-bit or float; numpy or dask.
        name: Name used in messages (file name or crop index).
        size: Side of the normalised crop.
        context: Side of the normalised crop relative to the nucleus size.

    Returns:
        A (size, size, 3) uint8 crop and its quality (see
        :func:`~napari_hematology.core.cells.crops.normalise_crop_checked`).

    Raises:
        InputError: The crop is grayscale, too small, or so large that it is a smear field (a blank crop
            is kept: it shows no cell and is classified ``other``).

    """
    return normalise_crop_checked(crop_to_rgb8(crop, name), size=size, context=context)


def iter_prepared_crops(
    paths: Sequence[Path],
    size: int = CROP_SIZE,
    context: float = CONTEXT,
    chunk: int = BATCH_SIZE,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    on_error: Callable[[Path, InputError], None] | None = None,
    transform: Callable[[np.ndarray, Path], np.ndarray] | None = None,
    processes: bool = False,
) -> Iterator[CropChunk]:
    """Read and normalise single-cell crop files on background threads, yielding them in chunks.

    The threads keep reading while the caller works on the chunk it was given (for example runs the
    network, which releases the interpreter lock), so reading and classifying overlap.

    Args:
        paths: Image files.
        size: Side of the normalised crops.
        context: Crop side relative to the nucleus size.
        chunk: Crops per yielded array.
        progress: Progress callback (per file).
        should_stop: Cancellation callback.
        on_error: Called with each file that cannot be used and the reason, which is then left out;
            None raises instead.
        transform: Applied to each crop (and its path) before normalisation, e.g. a training shift.
        processes: Normalise in :data:`READ_THREADS` worker processes (started afresh, about a second
            each) instead of threads: for large batches; ignored with a ``transform``.

    Yields:
        Chunks of (k, size, size, 3) uint8 crops with their qualities, in the order of ``paths``
        (skipped files left out).

    Raises:
        InputError: Without ``on_error``: a file cannot be read or is not a usable colour crop; the
            message names it.

    """
    read_one = partial(_prepare_file, size=size, context=context, transform=transform,
                       keep_errors=on_error is not None)
    pool: Executor
    if processes and transform is None:
        pool = ProcessPoolExecutor(READ_THREADS, mp_context=multiprocessing.get_context("spawn"))
        prepared = pool.map(read_one, paths, chunksize=FILES_PER_PROCESS_TASK)
    else:
        pool = ThreadPoolExecutor(READ_THREADS)
        prepared = pool.map(read_one, paths)
    try:
        pending: list[tuple[np.ndarray, str]] = []
        crops = tracked(prepared, len(paths), progress, should_stop, "reading crops")
        for path, crop in zip(paths, crops, strict=True):
            if isinstance(crop, InputError):
                on_error(path, crop)
                continue
            pending.append(crop)
            if len(pending) == chunk:
                yield _chunk(pending)
                pending = []
        if pending:
            yield _chunk(pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_file(
    path: Path,
    size: int,
    context: float,
    transform: Callable[[np.ndarray, Path], np.ndarray] | None,
    keep_errors: bool,
) -> tuple[np.ndarray, str] | InputError:
    """Read and normalise one crop file; with ``keep_errors`` an unusable file gives its error."""
    try:
        rgb = read_crop(path)
        if transform is not None:
            rgb = transform(rgb, path)
        return normalise_crop_checked(rgb, size=size, context=context)
    except InputError as error:
        if not keep_errors:
            raise
        return error


def _chunk(pending: list[tuple[np.ndarray, str]]) -> CropChunk:
    return CropChunk(np.stack([crop for crop, _ in pending]), [quality for _, quality in pending])


def read_prepared_crops(
    paths: Sequence[Path],
    size: int = CROP_SIZE,
    context: float = CONTEXT,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    transform: Callable[[np.ndarray, Path], np.ndarray] | None = None,
) -> np.ndarray:
    """Read single-cell crop files and normalise them, several files at a time.

    Args:
        paths: Image files.
        size: Side of the normalised crops.
        context: Crop side relative to the nucleus size.
        progress: Progress callback.
        should_stop: Cancellation callback.
        transform: Applied to each crop (and its path) before normalisation.

    Returns:
        An (n, size, size, 3) uint8 array in the order of ``paths``.

    Raises:
        InputError: A file cannot be read or is not a usable colour crop; the message names it.

    """
    chunks = [
        chunk.crops
        for chunk in iter_prepared_crops(
            paths, size, context, progress=progress, should_stop=should_stop, transform=transform
        )
    ]
    if not chunks:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(chunks)
