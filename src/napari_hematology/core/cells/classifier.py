"""Classify single white-cell crops: white-cell type, blast probability and cell embeddings.

The public API used by the command line, the widgets and the analysis pipeline::

    classifier = load_classifier()             # shipped weights, or load_classifier("my_model/", "cuda")
    table = classifier.predict(crops)          # label, blast_probability, prob_<class>..., atypical_score
    features = classifier.embed(crops)         # (n, d) float32

Crop files are read and normalised a batch at a time by :mod:`napari_hematology.core.cells.crop_batches`
and classified as files by :mod:`napari_hematology.core.cells.classify_files`.

``atypical_score`` (0..1) says how unlike the training cells a cell looks: the share of training cells
that lie closer to their class than it does in the model's embedding space
(:mod:`napari_hematology.core.cells.atypical`; 0.99: further out than 99% of them, 1: beyond all of
them). It needs the reference ``atypical.safetensors`` that training writes into the model folder; a
folder without one falls back to the model's uncertainty (one minus the top class probability, rescaled
so that 0 is a certain call and 1 an even spread over the classes). A crop with no visible cell (no
stained pixels) is labelled ``other`` with no class probabilities and an atypical score of 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hematology.core.cells.atypical import TypicalityReference, fit_reference, load_reference
from napari_hematology.core.cells.classes import BLAST, OTHER
from napari_hematology.core.cells.crop_batches import BATCH_SIZE, prepare_crop
from napari_hematology.core.cells.crops import CONTEXT, CROP_SIZE, has_visible_cell
from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

MODEL_NAME = "cell_classifier"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[2] / "weights" / "cell_classifier"
ATYPICAL_SCORE = "atypical_score"
QUALITY = "quality"


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
        return self.prepare_checked(crops, progress, should_stop)[0]

    def prepare_checked(
        self,
        crops: Sequence[Any],
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Normalise crops as :meth:`prepare` does, with the normaliser's quality of each crop.

        Raises:
            InputError: A crop cannot be used; the message names it by index.

        """
        prepared = [
            prepare_crop(crop, f"crop {index}", self.crop_size, self.context)
            for index, crop in tracked(
                enumerate(crops), len(crops), progress, should_stop, "preparing crops"
            )
        ]
        if not prepared:
            return np.zeros((0, self.crop_size, self.crop_size, 3), dtype=np.uint8), []
        return np.stack([crop for crop, _ in prepared]), [quality for _, quality in prepared]

    def predict_prepared(
        self,
        prepared: np.ndarray,
        quality: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> pd.DataFrame:
        """Classify crops already normalised by :meth:`prepare`.

        Args:
            prepared: (n, size, size, 3) uint8 normalised crops.
            quality: The normaliser's quality of each crop (:meth:`prepare_checked`); None: not known,
                and no ``quality`` column.
            progress: Progress callback.
            should_stop: Cancellation callback.

        Returns:
            One row per crop: ``label``, ``blast_probability``, ``prob_<class>`` per class,
            ``atypical_score`` and (when ``quality`` is given) ``quality``; crops without a visible cell
            are ``other``.

        """
        reference = self.reference
        forward, width = _softmax, len(self.classes)
        if reference is not None:
            forward, width = self._whitened_forward(reference), width + reference.projection.shape[1]
        outputs = self._run(prepared, forward, progress, should_stop).reshape(len(prepared), width)
        probabilities, whitened = np.split(outputs, [len(self.classes)], axis=1)
        atypical = None if reference is None else reference.score_whitened(whitened)
        table = probability_table(probabilities, self.classes, has_visible_cell(prepared), atypical)
        if quality is not None:
            table[QUALITY] = list(quality)
        return table

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
            One row per crop: ``label``, ``blast_probability``, ``prob_<class>`` per class,
            ``atypical_score`` and ``quality`` (``ok``, or why the crop normaliser doubts the crop);
            crops without a visible cell (blank ones included) are ``other``.

        Raises:
            InputError: A crop cannot be used (grayscale, too small or too large).

        """
        prepared, quality = self.prepare_checked(crops, progress, should_stop)
        return self.predict_prepared(prepared, quality, progress, should_stop)

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


def nothing_read_message(skipped: list[dict[str, str]]) -> str:
    """The error for a batch in which no file could be used: each file's reason, on one line."""
    if len(skipped) == 1:
        return skipped[0]["reason"]
    reasons = " ".join(item["reason"] for item in skipped)
    return f"None of the {len(skipped)} files could be used: {reasons}"
