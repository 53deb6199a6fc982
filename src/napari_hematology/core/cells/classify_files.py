"""Classify single-cell crop files: a folder or list of crops in, one table row per usable file out.

For example::

    table = classify_images(["cells/"])        # image, label, ...; table.attrs["skipped"]: unread files

With ``adapt=True`` the network's BatchNorm statistics are first re-estimated on the crops (AdaBN), for a
batch of one lab the model never saw. :func:`unfamiliar_batch_note` warns when many cells of a batch look
unlike the training cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classifier import (
    ATYPICAL_SCORE,
    CellClassifier,
    adapt_batch_norm,
    load_classifier,
    nothing_read_message,
)
from napari_hematology.core.cells.crop_batches import READ_THREADS, CropChunk, iter_prepared_crops
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import list_images
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

# With worker processes allowed, from this many files on: starting them costs about a second, and they use
# every core where threads share one (the normaliser holds Python's lock): 2,000 PBC crops about a fifth
# faster on the 2-core machine.
PROCESS_MIN_FILES = 1000

MIN_CROPS_TO_ADAPT = 32
# leave-one-source-out, the sources the model failed on had 43-69% of cells above 0.95, the others 13-17%
UNFAMILIAR_SCORE = 0.95
UNFAMILIAR_SHARE = 0.3
UNFAMILIAR_MIN_CELLS = 10


def classify_images(
    paths: Sequence[str | Path] | str | Path,
    model_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    device: str = "auto",
    adapt: bool = False,
    processes: bool = False,
) -> pd.DataFrame:
    """Classify single-cell crop files (folders are searched for images); unusable files are skipped.

    Args:
        paths: Image files and/or folders.
        model_dir: Model folder; None uses the shipped weights.
        progress: Progress callback.
        should_stop: Cancellation callback.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        adapt: Re-estimate the network's BatchNorm statistics on these crops before classifying them
            (AdaBN, no labels used): for a batch of crops from one lab the model never saw. All crops
            are then held in memory (12 kB each) and read before the first is classified.
        processes: Normalise batches of :data:`PROCESS_MIN_FILES` or more files in worker processes
            (spawned: the calling script's main module must be guarded by ``if __name__ == "__main__"``,
            as the command line's is).

    Returns:
        One row per usable image: ``image``, ``label``, ``blast_probability``, ``prob_<class>`` per class
        and ``atypical_score``. ``table.attrs["skipped"]`` lists ``{"image", "reason"}`` for each file
        that could not be used.

    Raises:
        InputError: A path is missing or holds no images, no file could be used, or the device is not
            available.
        ModelFileError: The model folder cannot be loaded.

    """
    files = list_images(paths)
    classifier = load_classifier(model_dir, device)
    check_cancel(should_stop)
    skipped: list[dict[str, str]] = []
    chunks = iter_prepared_crops(
        files,
        classifier.crop_size,
        classifier.context,
        progress=progress,
        should_stop=should_stop,
        on_error=lambda path, error: skipped.append({"image": str(path), "reason": str(error)}),
        processes=processes and len(files) >= PROCESS_MIN_FILES,
    )
    with _cores_left_to_the_readers():
        if adapt:
            tables = _classify_adapted(classifier, list(chunks), should_stop)
        else:
            tables = [
                classifier.predict_prepared(chunk.crops, chunk.quality, should_stop=should_stop)
                for chunk in chunks
            ]
    if not tables:
        raise InputError(nothing_read_message(skipped))
    table = pd.concat(tables, ignore_index=True)
    unread = {item["image"] for item in skipped}
    table.insert(0, "image", [str(path) for path in files if str(path) not in unread])
    table.attrs["skipped"] = skipped
    return table


@contextmanager
def _cores_left_to_the_readers() -> Iterator[None]:
    """Run torch on the cores the crop-reading threads leave free, then restore its thread count.

    Reading and the network overlap; with both at full width on a small machine they fight over the
    cores (2 cores: 428 crops/s with 2 torch threads, 520 with 1).
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores - READ_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _classify_adapted(
    classifier: CellClassifier, chunks: list[CropChunk], should_stop: StopCallback | None
) -> list[pd.DataFrame]:
    """Classify all the crops read with the BatchNorm statistics adapted to them, as one table.

    The atypical score stays the unadapted model's: its reference describes that model's embeddings.
    """
    if not chunks:
        return []
    crops = np.concatenate([chunk.crops for chunk in chunks])
    quality = [value for chunk in chunks for value in chunk.quality]
    if len(crops) < MIN_CROPS_TO_ADAPT:
        raise InputError(
            f"Only {len(crops)} crop(s) could be read; adapting to a lab needs at least "
            f"{MIN_CROPS_TO_ADAPT}. Classify without --adapt, or add more crops of that lab."
        )
    atypical = classifier.predict_prepared(crops, should_stop=should_stop)[ATYPICAL_SCORE].to_numpy()
    adapt_batch_norm(classifier.model, crops)
    table = classifier.predict_prepared(crops, quality, should_stop=should_stop)
    table[ATYPICAL_SCORE] = atypical
    return [table]


def unfamiliar_batch_note(atypical: pd.Series, min_cells: int = UNFAMILIAR_MIN_CELLS) -> str | None:
    """A warning when many cells of a batch look unlike the model's training cells, else None.

    Args:
        atypical: The batch's atypical scores.
        min_cells: Fewest cells for which a share is judged.

    Returns:
        One sentence for the user (the caller adds what to do), or None.

    """
    share = float((atypical > UNFAMILIAR_SCORE).mean()) if len(atypical) >= min_cells else 0.0
    if share < UNFAMILIAR_SHARE:
        return None
    return (
        f"{share:.0%} of these cells look unlike the model's training cells (atypical_score above "
        f"{UNFAMILIAR_SCORE}), so its calls on them are unreliable."
    )
