"""Classify single white-cell crops: white-cell type, blast probability and cell embeddings.

The public API used by the command line, the widgets and the analysis pipeline::

    classifier = load_classifier()             # shipped weights, or load_classifier("my_model/", "cuda")
    table = classifier.predict(crops)          # label, blast_probability, prob_<class>..., atypical_score
    features = classifier.embed(crops)         # (n, d) float32
    table = classify_images(["cells/"])        # image, label, ...; table.attrs["skipped"]: unread files

``atypical_score`` (0..1) says how unlike the training cells a cell looks: the share of training cells
that lie closer to their class than it does in the model's embedding space
(:mod:`napari_hematology.core.cells.atypical`; 0.99: further out than 99% of them, 1: beyond all of
them). It needs the reference ``atypical.safetensors`` that training writes into the model folder; a
folder without one falls back to the model's uncertainty (one minus the top class probability, rescaled
so that 0 is a certain call and 1 an even spread over the classes). A crop with no visible cell (no
stained pixels) is labelled ``other`` with no class probabilities and an atypical score of 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.atypical import TypicalityReference, fit_reference, load_reference
from napari_hematology.core.cells.classes import BLAST, OTHER
from napari_hematology.core.cells.crops import (
    CONTEXT,
    CROP_SIZE,
    crop_to_rgb8,
    has_visible_cell,
    normalise_crop,
    read_crop,
)
from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.io import list_images
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, tracked

MODEL_NAME = "cell_classifier"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[2] / "weights" / "cell_classifier"
READ_THREADS = 2
BATCH_SIZE = 256
ATYPICAL_SCORE = "atypical_score"
MIN_CROPS_TO_ADAPT = 32
# leave-one-source-out, the sources the model failed on had 43-69% of cells above 0.95, the others 13-17%
UNFAMILIAR_SCORE = 0.95
UNFAMILIAR_SHARE = 0.3
UNFAMILIAR_MIN_CELLS = 10


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


@dataclass
class CellClassifier:
    """A trained white-cell classifier with its preprocessing settings.

    Attributes:
        model: The ``cell_classifier`` registry model (eval mode).
        classes: Class names in output order.
        crop_size: Side of the normalised crops the model was trained on.
        context: Crop side relative to the nucleus size used in training.
        metadata: Everything saved with the model (recipe, metrics).
        reference: Where the training cells lie in embedding space, for the atypical score; None falls
            back to the model's uncertainty.

    """

    model: Any
    classes: list[str]
    crop_size: int = CROP_SIZE
    context: float = CONTEXT
    metadata: dict[str, Any] = field(default_factory=dict)
    reference: TypicalityReference | None = None

    def prepare(
        self,
        crops: Sequence[Any],
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> np.ndarray:
        """Normalise crops of any size into an (n, size, size, 3) uint8 array.

        Raises:
            InputError: A crop cannot be used; the message names it by index.

        """
        prepared = [
            prepare_crop(crop, f"crop {index}", self.crop_size, self.context)
            for index, crop in tracked(
                enumerate(crops), len(crops), progress, should_stop, "preparing crops"
            )
        ]
        return self._stack(prepared)

    def _stack(self, prepared: list[np.ndarray]) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.crop_size, self.crop_size, 3), dtype=np.uint8)
        return np.stack(prepared)

    def predict_prepared(
        self,
        prepared: np.ndarray,
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> pd.DataFrame:
        """Classify crops already normalised by :meth:`prepare`.

        Returns:
            One row per crop: ``label``, ``blast_probability``, ``prob_<class>`` per class and
            ``atypical_score``; crops without a visible cell are ``other``.

        """
        reference = self.reference
        forward, width = _softmax, len(self.classes)
        if reference is not None:
            forward, width = self._whitened_forward(reference), width + reference.projection.shape[1]
        outputs = self._run(prepared, forward, progress, should_stop).reshape(len(prepared), width)
        probabilities, whitened = np.split(outputs, [len(self.classes)], axis=1)
        atypical = None if reference is None else reference.score_whitened(whitened)
        return probability_table(probabilities, self.classes, has_visible_cell(prepared), atypical)

    def _whitened_forward(self, reference: TypicalityReference) -> Callable:
        """One pass giving each crop's class probabilities followed by its whitened embedding."""
        import torch

        device = next(self.model.parameters()).device
        centre = torch.from_numpy(reference.centre).to(device)
        projection = torch.from_numpy(reference.projection).to(device)

        def forward(net, batch):
            features = net.embed(batch)
            probabilities = net.logits(features).softmax(dim=1)
            return torch.cat([probabilities, (features - centre) @ projection], dim=1)

        return forward

    def with_reference(
        self, prepared: np.ndarray, should_stop: StopCallback | None = None
    ) -> CellClassifier:
        """A copy of this classifier holding a reference fitted on its training crops (atypical score).

        Args:
            prepared: Normalised training crops (as :meth:`prepare` gives); crops without a visible cell
                are left out. Each crop counts for the class the model calls it.
            should_stop: Cancellation callback.

        Returns:
            The copy (this classifier itself when no crop shows a cell).

        """
        visible = prepared[has_visible_cell(prepared)]
        if len(visible) == 0:
            return self
        outputs = self._run(visible, _logits_and_features, None, should_stop)
        logits, features = np.split(outputs, [len(self.classes)], axis=1)
        return replace(self, reference=fit_reference(features, logits.argmax(axis=1)))

    def predict(
        self,
        crops: Sequence[Any],
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> pd.DataFrame:
        """Classify single-cell crops (RGB arrays of any size, one cell roughly centred in each).

        Args:
            crops: Crop arrays.
            progress: Progress callback.
            should_stop: Cancellation callback.

        Returns:
            One row per crop: ``label``, ``blast_probability``, ``prob_<class>`` per class and
            ``atypical_score``; crops without a visible cell (blank ones included) are ``other``.

        Raises:
            InputError: A crop cannot be used (grayscale, too small or too large).

        """
        return self.predict_prepared(self.prepare(crops, progress, should_stop), progress, should_stop)

    def embed(
        self,
        crops: Sequence[Any],
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> np.ndarray:
        """Cell features for downstream models (multiple-instance learning, label review).

        Returns:
            An (n, d) float32 array.

        """
        prepared = self.prepare(crops, progress, should_stop)
        if len(prepared) == 0:
            return np.zeros((0, self.model.embedding_size), dtype=np.float32)
        features = self._run(prepared, lambda net, batch: net.embed(batch), progress, should_stop)
        return features.astype(np.float32)

    def _run(self, prepared: np.ndarray, forward, progress, should_stop) -> np.ndarray:
        import torch

        from napari_hematology.core.training import predict

        batch = torch.from_numpy(np.ascontiguousarray(prepared)).permute(0, 3, 1, 2)
        return predict(
            self.model, batch, BATCH_SIZE, forward=forward, progress=progress, should_stop=should_stop
        )


def _softmax(model, batch):
    return model(batch).softmax(dim=1)


def adapt_batch_norm(model, crops: np.ndarray, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm layer's running statistics on a lab's unaugmented crops (AdaBN).

    Args:
        model: A ``cell_classifier`` registry model; changed in place and left in eval mode.
        crops: (n, size, size, 3) uint8 normalised crops of one lab (labels are not needed).
        batch_size: Crops per forward pass.

    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    device = next(model.parameters()).device
    model.train()
    with torch.no_grad():
        # equal-sized batches, as the cumulative average weighs every batch alike
        for batch in np.array_split(crops, int(np.ceil(len(crops) / batch_size))):
            model(torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def fold_temperature(model, temperature: float) -> None:
    """Divide the last layer by ``temperature``, so that the model's own softmax is the calibrated one."""
    import torch

    with torch.no_grad():
        model.classifier.weight.div_(temperature)
        model.classifier.bias.div_(temperature)


def _logits_and_features(model, batch):
    import torch

    features = model.embed(batch)
    return torch.cat([model.logits(features), features], dim=1)


def probability_table(
    probabilities: np.ndarray,
    classes: Sequence[str],
    visible: np.ndarray | None = None,
    atypical: np.ndarray | None = None,
) -> pd.DataFrame:
    """Turn an (n, classes) probability matrix into the classifier's output table.

    Args:
        probabilities: Rows summing to 1.
        classes: Class names, in column order.
        visible: Whether each crop shows a cell; rows without one become ``other`` with no
            probabilities and an atypical score of 1. None: every crop shows one.
        atypical: (n,) atypical scores measured from the embeddings; None uses the model's
            uncertainty (:func:`atypical_score`).

    Returns:
        Columns ``label``, ``blast_probability``, ``prob_<class>`` per class and ``atypical_score``.

    """
    probabilities = np.array(probabilities, dtype=np.float64).reshape(-1, len(classes))
    labels = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    atypical = atypical_score(probabilities) if atypical is None else np.array(atypical, dtype=np.float64)
    if visible is not None:
        hidden = ~np.asarray(visible, dtype=bool)
        probabilities[hidden] = np.nan
        labels[hidden] = OTHER
        atypical[hidden] = 1.0
    table = pd.DataFrame(
        {
            "label": pd.Series(labels, dtype=object),
            "blast_probability": probabilities[:, list(classes).index(BLAST)],
        }
    )
    for index, name in enumerate(classes):
        table[f"prob_{name}"] = probabilities[:, index]
    table[ATYPICAL_SCORE] = atypical
    return table


def atypical_score(probabilities: np.ndarray) -> np.ndarray:
    """How unsure the classifier is: 0 for a certain call, 1 for an even spread over the classes.

    The atypical score of a model folder without a reference: it needs nothing but the probabilities.

    Args:
        probabilities: (n, classes) rows summing to 1.

    Returns:
        (n,) scores in [0, 1].

    """
    classes = probabilities.shape[1]
    if classes < 2:
        return np.zeros(len(probabilities))
    return np.clip((1.0 - probabilities.max(axis=1)) / (1.0 - 1.0 / classes), 0.0, 1.0)


def load_classifier(model_dir: str | Path | None = None, device: str = "auto") -> CellClassifier:
    """Load a cell classifier.

    Args:
        model_dir: Folder written by ``napari-hematology train-classifier``; None loads the shipped
            default weights.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.

    Returns:
        The classifier, on ``device``.

    Raises:
        ModelFileError: The folder is missing, corrupt, or holds another kind of model (or an atypical
            reference that does not fit it).
        InputError: The device is unknown or not available on this machine.

    """
    from napari_hematology.core.registry import load_model
    from napari_hematology.core.training import select_device

    try:
        torch_device = select_device(device)
    except ValueError as error:
        raise InputError(str(error)) from error
    directory = Path(model_dir) if model_dir is not None else SHIPPED_MODEL_DIR
    model, metadata = load_model(directory, expected_name=MODEL_NAME, device=str(torch_device))
    classes = metadata.get("classes")
    if not classes or BLAST not in classes:
        raise ModelFileError(
            f"{directory}: the model's config.json lists no classes (or no '{BLAST}' class); retrain it "
            "with 'napari-hematology train-classifier'."
        )
    return CellClassifier(
        model=model,
        classes=list(classes),
        crop_size=int(metadata.get("crop_size", CROP_SIZE)),
        context=float(metadata.get("context", CONTEXT)),
        metadata=metadata,
        reference=load_reference(directory, model.embedding_size),
    )


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


def classify_images(
    paths: Sequence[str | Path] | str | Path,
    model_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    device: str = "auto",
    adapt: bool = False,
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
    )
    with _cores_left_to_the_readers():
        if adapt:
            tables = _classify_adapted(classifier, list(chunks), should_stop)
        else:
            tables = [classifier.predict_prepared(chunk, should_stop=should_stop) for chunk in chunks]
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
    classifier: CellClassifier, chunks: list[np.ndarray], should_stop: StopCallback | None
) -> list[pd.DataFrame]:
    """Classify all the crops read with the BatchNorm statistics adapted to them, as one table.

    The atypical score stays the unadapted model's: its reference describes that model's embeddings.
    """
    if not chunks:
        return []
    crops = np.concatenate(chunks)
    if len(crops) < MIN_CROPS_TO_ADAPT:
        raise InputError(
            f"Only {len(crops)} crop(s) could be read; adapting to a lab needs at least "
            f"{MIN_CROPS_TO_ADAPT}. Classify without --adapt, or add more crops of that lab."
        )
    atypical = classifier.predict_prepared(crops, should_stop=should_stop)[ATYPICAL_SCORE].to_numpy()
    adapt_batch_norm(classifier.model, crops)
    table = classifier.predict_prepared(crops, should_stop=should_stop)
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


def nothing_read_message(skipped: list[dict[str, str]]) -> str:
    """The error for a batch in which no file could be used: each file's reason, on one line."""
    if len(skipped) == 1:
        return skipped[0]["reason"]
    reasons = " ".join(item["reason"] for item in skipped)
    return f"None of the {len(skipped)} files could be used: {reasons}"
