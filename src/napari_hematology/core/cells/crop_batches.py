"""Read single-cell crop files and normalise them for the classifier, in batches, on background threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from napari_hematology.core.cells.crops import CONTEXT, CROP_SIZE, crop_to_rgb8, normalise_crop, read_crop
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

READ_THREADS = 2
BATCH_SIZE = 256  # crops per batch read, and per forward pass of the classifier


def prepare_crop(crop: Any, name: str, size: int = CROP_SIZE, context: float = CONTEXT) -> np.ndarray:
    """Check one single-cell crop, convert it to 8-bit RGB and normalise it for the classifier.

    Args:
        crop: Image array (Y, X, 3), (Y, X, 4), 16-bit or float; numpy or dask.
        name: Name used in messages (file name or crop index).
        size: Side of the normalised crop.
        context: Side of the normalised crop relative to the nucleus size.

    Returns:
        A (size, size, 3) uint8 crop.

    Raises:
        InputError: The crop is grayscale, too small, or so large that it is a smear field (a blank crop
            is kept: it shows no cell and is classified ``other``).

    """
    return normalise_crop(crop_to_rgb8(crop, name), size=size, context=context)


def iter_prepared_crops(
    paths: Sequence[Path],
    size: int = CROP_SIZE,
    context: float = CONTEXT,
    chunk: int = BATCH_SIZE,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    on_error: Callable[[Path, InputError], None] | None = None,
) -> Iterator[np.ndarray]:
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

    Yields:
        (k, size, size, 3) uint8 arrays, in the order of ``paths`` (skipped files left out).

    Raises:
        InputError: Without ``on_error``: a file cannot be read or is not a usable colour crop; the
            message names it.

    """

    def read_one(path: Path) -> np.ndarray | InputError:
        try:
            return normalise_crop(read_crop(path), size=size, context=context)
        except InputError as error:
            if on_error is None:
                raise
            return error

    pool = ThreadPoolExecutor(READ_THREADS)
    try:
        pending: list[np.ndarray] = []
        crops = tracked(pool.map(read_one, paths), len(paths), progress, should_stop, "reading crops")
        for path, crop in zip(paths, crops, strict=True):
            if isinstance(crop, InputError):
                on_error(path, crop)
                continue
            pending.append(crop)
            if len(pending) == chunk:
                yield np.stack(pending)
                pending = []
        if pending:
            yield np.stack(pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_prepared_crops(
    paths: Sequence[Path],
    size: int = CROP_SIZE,
    context: float = CONTEXT,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> np.ndarray:
    """Read single-cell crop files and normalise them, several files at a time.

    Args:
        paths: Image files.
        size: Side of the normalised crops.
        context: Crop side relative to the nucleus size.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        An (n, size, size, 3) uint8 array in the order of ``paths``.

    Raises:
        InputError: A file cannot be read or is not a usable colour crop; the message names it.

    """
    chunks = list(iter_prepared_crops(paths, size, context, progress=progress, should_stop=should_stop))
    if not chunks:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(chunks)
