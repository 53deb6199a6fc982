"""Fit, save, load and apply expression classifiers: pretrain the encoder, then train a head on its latent.

``fit_expression_model`` pretrains the encoder on every cell of the data with a self-supervised pretext
task (streamed, one dense batch at a time), freezes it, and trains the head on the labelled cells' latent
vectors. In a small cohort (fewer than ``SMALL_COHORT_CELLS`` cells, e.g. a few dozen patient arrays) a
``linear`` or ``ffn`` head reads the preprocessed genes instead, trained full-batch to convergence with an
L2 penalty (penalised logistic regression for ``linear``), so the result does not depend on the seed; the
default head ``auto`` is ``linear`` there (fewer than ``SMALL_COHORT_CELLS`` labelled cells), else ``ffn``.
``predict_expression`` applies a model unchanged to any data whose genes it can align by name, which is
how zero-shot transfer to another population or dataset works.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.errors import InputError
from napari_hematology.core.expression.choices import (
    ENCODERS,
    GENE_INPUT_HEADS,
    HEAD_CHOICES,
    HEAD_INPUT_CHOICES,
    SMALL_COHORT_CELLS,
    VALUE_KINDS,
)
from napari_hematology.core.expression.data import ExpressionData, labels_of
from napari_hematology.core.expression.graph import knn_adjacency
from napari_hematology.core.expression.preprocessing import (
    PreprocessConfig,
    Preprocessor,
    RowCollator,
    check_values,
    fit_preprocessing,
    transformed_batches,
)
from napari_hematology.core.expression.selfsupervised import PRETEXT_LOSSES
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.training import TrainConfig, seeded, train

MODEL_NAME = "expression_model"


def _default_pretraining() -> TrainConfig:
    return TrainConfig(epochs=15, batch_size=128, learning_rate=1e-3)


def _default_head_training() -> TrainConfig:
    return TrainConfig(epochs=60, batch_size=64, learning_rate=5e-3, weight_decay=1e-3)


def _default_gene_head_training() -> TrainConfig:
    return TrainConfig(epochs=1000, batch_size=1_000_000, learning_rate=3e-2, weight_decay=0.0)


def _default_graph_training() -> TrainConfig:
    return TrainConfig(epochs=200, batch_size=1_000_000, learning_rate=1e-2, weight_decay=5e-4)


@dataclass
class ExpressionConfig:
    """Architecture and training settings of an expression classifier.

    Attributes:
        encoder: Pretext task for the encoder: ``ae``, ``vime``, ``scarf`` or ``byol``.
        head: Classifier on the latent: ``ffn``, ``transformer``, ``gcn``, ``linear`` or ``auto``
            (``linear`` when fewer than ``SMALL_COHORT_CELLS`` cells are labelled, else ``ffn``).
        hidden: Hidden layer widths of the encoder (genes -> hidden -> latent).
        latent: Latent size.
        knn: Neighbours per cell in the graph of the ``gcn`` head.
        head_input: What the head reads: ``latent``, ``genes`` (``linear`` and ``ffn`` heads only) or
            ``auto`` (genes when the training data has fewer than ``SMALL_COHORT_CELLS`` cells).
        gene_head_l2: L2 penalty on the weights of a head that reads genes (sum of squares, added to the
            mean cross-entropy).
        preprocess: Preprocessing settings.
        pretraining: Training settings of the encoder (epochs=0 skips pretraining).
        head_training: Training settings of the ``ffn``, ``transformer`` and ``linear`` heads.
        graph_training: Training settings of the ``gcn`` head (full-batch by default, as usual for GCNs).
        gene_head_training: Training settings of a head that reads genes (full-batch, to convergence).
    """

    encoder: str = "ae"
    head: str = "auto"
    hidden: tuple[int, ...] = (512,)
    latent: int = 256
    knn: int = 15
    head_input: str = "auto"
    gene_head_l2: float = 1e-2
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    pretraining: TrainConfig = field(default_factory=_default_pretraining)
    head_training: TrainConfig = field(default_factory=_default_head_training)
    graph_training: TrainConfig = field(default_factory=_default_graph_training)
    gene_head_training: TrainConfig = field(default_factory=_default_gene_head_training)

    def resolved(self, n_cells: int, n_labelled: int) -> ExpressionConfig:
        """A copy with ``auto`` head and head input replaced by what they mean for this training data.

        Args:
            n_cells: Cells of the training data (labelled or not); fewer than ``SMALL_COHORT_CELLS`` make
                a ``linear`` or ``ffn`` head read the genes.
            n_labelled: Labelled cells; fewer than ``SMALL_COHORT_CELLS`` make the head ``linear``.
        """
        resolved = copy.deepcopy(self)
        if resolved.head == "auto":
            resolved.head = "linear" if n_labelled < SMALL_COHORT_CELLS else "ffn"
        if resolved.head_input == "auto":
            small = n_cells < SMALL_COHORT_CELLS and resolved.head in GENE_INPUT_HEADS
            resolved.head_input = "genes" if small else "latent"
        return resolved

    def head_training_for(self, head_input: str) -> TrainConfig:
        """Training settings of the head for the given input."""
        if self.head == "gcn":
            return self.graph_training
        return self.gene_head_training if head_input == "genes" else self.head_training

    @classmethod
    def from_options(cls, encoder: str = "ae", head: str = "auto", values: str = "counts",
                     n_top_genes: int | None = 2000, pretrain_epochs: int | None = None,
                     seed: int = 0, select_genes: int | None = None,
                     head_input: str = "auto") -> ExpressionConfig:
        """The settings the command line and the widget expose, everything else at its default.

        ``n_top_genes`` 0 or None keeps every gene.

        Raises:
            InputError: Unknown encoder, head, value kind or head input, genes as input of a head that
                cannot read them, or a negative epoch count.
        """
        for option, value, allowed in (("encoder", encoder, ENCODERS), ("head", head, HEAD_CHOICES),
                                       ("values", values, VALUE_KINDS),
                                       ("head input", head_input, HEAD_INPUT_CHOICES)):
            if value not in allowed:
                raise InputError(f"Unknown {option} {value!r}; choose one of {', '.join(allowed)}.")
        if head_input == "genes" and head not in GENE_INPUT_HEADS:
            raise InputError(f"The {head} head reads the latent only; use head input 'genes' with the "
                             f"{' or '.join(GENE_INPUT_HEADS)} head, or head input 'latent'.")
        if pretrain_epochs is not None and pretrain_epochs < 0:
            raise InputError(f"Pretraining epochs must be 0 or more, got {pretrain_epochs}.")
        if select_genes is not None and select_genes < 1:
            raise InputError(f"The number of selected genes must be 1 or more, got {select_genes}.")
        config = cls(encoder=encoder, head=head, head_input=head_input, preprocess=PreprocessConfig(
            values=values, n_top_genes=n_top_genes or None, select_genes=select_genes))
        for training in config.trainings():
            training.seed = seed
        if pretrain_epochs is not None:
            config.pretraining.epochs = pretrain_epochs
        return config

    def trainings(self) -> tuple[TrainConfig, ...]:
        """Every training setting (to set seeds or threads on all of them)."""
        return (self.pretraining, self.head_training, self.graph_training, self.gene_head_training)


@dataclass
class ExpressionClassifier:
    """A fitted model: the network, its preprocessing and class names."""

    network: object
    preprocessor: Preprocessor
    classes: list[str]
    label_key: str
    knn: int = 15
    history: dict = field(default_factory=dict)

    @property
    def uses_graph(self) -> bool:
        """Whether predictions need the kNN graph of the cells being predicted."""
        return self.network.uses_graph


def _phase(progress: ProgressCallback | None, name: str):
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{name}: {message}")


def training_labels(data: ExpressionData, label_key: str) -> tuple[np.ndarray, list[str]]:
    """Labels of every cell and the sorted class names, checked to be usable for training.

    Raises:
        InputError: Missing column, no labelled cell, or fewer than two classes.
    """
    labels = labels_of(data, label_key)
    classes = sorted(set(labels[labels != ""]))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no labelled cell"
        raise InputError(
            f"{data.name}: column {label_key!r} has {found}; a classifier needs at least two classes."
        )
    return labels, classes


def fit_expression_model(
    data: ExpressionData,
    label_key: str,
    config: ExpressionConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> ExpressionClassifier:
    """Pretrain an encoder on all cells, then train a head on the labelled ones.

    Cells whose label is missing are used for pretraining only.

    Args:
        data: Raw expression data.
        label_key: Annotation column with the classes.
        config: Model and training settings.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The fitted classifier.

    Raises:
        InputError: Bad labels or values (see :func:`training_labels`, :func:`check_values`).
    """
    from napari_hematology.core.registry import create_model

    labels, classes = training_labels(data, label_key)
    config = (config or ExpressionConfig()).resolved(data.n_cells, int((labels != "").sum()))
    check_values(data, config.preprocess.values)
    preprocessor = fit_preprocessing(
        data, config.preprocess, labels, progress=_phase(progress, "preprocessing"),
        should_stop=should_stop)
    with seeded(config.pretraining.seed):
        network = create_model(
            MODEL_NAME,
            n_genes=len(preprocessor.genes),
            n_classes=len(classes),
            encoder=config.encoder,
            head=config.head,
            hidden=list(config.hidden),
            latent=config.latent,
            head_input=config.head_input)
    history = {"pretraining_loss": pretrain_encoder(network, data, preprocessor, config.pretraining,
                                                    progress=progress, should_stop=should_stop)}
    model = ExpressionClassifier(network, preprocessor, classes, label_key, config.knn)
    history["head_loss"] = train_head(model, data, labels, config.head_training_for(config.head_input),
                                      l2=config.gene_head_l2 if config.head_input == "genes" else 0.0,
                                      progress=progress, should_stop=should_stop)
    model.history = history
    return model


def pretrain_encoder(network, data: ExpressionData, preprocessor: Preprocessor, config: TrainConfig,
                     *, progress=None, should_stop=None) -> list[float]:
    """Pretrain ``network``'s encoder with its pretext task on every cell of ``data`` (streamed).

    Returns:
        Mean pretext loss per epoch.
    """
    if config.epochs == 0:
        return []
    parameters = list(network.encoder.parameters()) + list(network.pretext.parameters())
    history = train(
        network,
        np.arange(data.n_cells),
        PRETEXT_LOSSES[network.method],
        _drop_last_safe(config, data.n_cells),
        progress=_phase(progress, f"pretraining ({network.method})"),
        should_stop=should_stop,
        collate_fn=RowCollator(data, preprocessor),
        parameters=parameters)
    return history.loss


def _drop_last_safe(config: TrainConfig, n_cells: int) -> TrainConfig:
    """Contrastive losses need at least two cells per batch; shrink the batch for tiny data sets."""
    return TrainConfig(**{**asdict(config), "batch_size": max(2, min(config.batch_size, n_cells))})


def encode(network, data: ExpressionData, preprocessor: Preprocessor, *, head_features: bool = False,
           should_stop=None) -> np.ndarray:
    """Latent vectors of every cell of ``data`` (or what the head reads), computed chunk by chunk.

    Returns:
        float32 array (cells, latent), or (cells, head input width) with ``head_features``.
    """
    import torch

    forward = network.head_features if head_features else network.embed
    device = next(network.parameters()).device
    network.eval()
    chunks = []
    with torch.no_grad():
        for batch in transformed_batches(data, preprocessor):
            check_cancel(should_stop)
            chunks.append(forward(torch.from_numpy(batch).to(device)).cpu().numpy())
    return np.concatenate(chunks)


def _class_weights(targets: np.ndarray, n_classes: int):
    import torch

    counts = np.bincount(targets, minlength=n_classes).astype(np.float32)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def train_head(model: ExpressionClassifier, data: ExpressionData, labels: np.ndarray,
               config: TrainConfig, *, l2: float = 0.0, progress=None, should_stop=None) -> list[float]:
    """Train the head on the labelled cells' head features (class-balanced loss).

    The features are the frozen encoder's latent, or the preprocessed genes for a head that reads genes.
    The ``gcn`` head sees the kNN graph of all cells of ``data``; the loss uses labelled cells only.
    ``l2`` adds that multiple of the sum of squared head weights (biases excluded) to the loss.

    Returns:
        Mean loss per epoch.
    """
    import torch
    import torch.nn.functional as F

    network = model.network
    labelled = np.flatnonzero(labels != "")
    targets = np.searchsorted(model.classes, labels[labelled])
    weights = _class_weights(targets, len(model.classes))
    features = torch.from_numpy(encode(network, data, model.preprocessor, head_features=True,
                                       should_stop=should_stop))
    if network.uses_graph:
        adjacency = knn_adjacency(features.numpy(), model.knn)
        dataset = (torch.from_numpy(labelled), torch.from_numpy(targets))

        def loss_fn(head, batch, epoch):
            rows, target = batch
            logits = head(features.to(target.device), adjacency.to(target.device))[rows]
            return F.cross_entropy(logits, target, weight=weights.to(target.device))
    else:
        dataset = (features[labelled], torch.from_numpy(targets))

        def loss_fn(head, batch, epoch):
            inputs, target = batch
            loss = F.cross_entropy(head(inputs), target, weight=weights.to(target.device))
            if l2:
                loss = loss + l2 * sum((p**2).sum() for p in head.parameters() if p.dim() > 1)
            return loss

    history = train(network.head, dataset, loss_fn, config,
                    progress=_phase(progress, "training head"), should_stop=should_stop)
    return history.loss


def class_probabilities(model: ExpressionClassifier, data: ExpressionData, *, progress=None,
                        should_stop=None) -> tuple[np.ndarray, np.ndarray]:
    """Latent vectors and class probabilities of every cell, after aligning genes to the model.

    Returns:
        ``(latent, probabilities)`` arrays of shapes (cells, latent) and (cells, classes).
    """
    import torch

    check_values(data, model.preprocessor.config.values)
    if progress is not None:
        progress(0, 1, "predicting")
    latent = encode(model.network, data, model.preprocessor, should_stop=should_stop)
    features = latent
    if model.network.head_input == "genes":
        features = encode(model.network, data, model.preprocessor, head_features=True,
                          should_stop=should_stop)
    adjacency = knn_adjacency(latent, model.knn) if model.uses_graph else None
    with torch.no_grad():
        logits = model.network.classify(torch.from_numpy(features), adjacency)
    if progress is not None:
        progress(1, 1, "predicting")
    return latent, torch.softmax(logits, dim=1).numpy()


def predict_expression(model: ExpressionClassifier, data: ExpressionData, *, progress=None,
                       should_stop=None) -> pd.DataFrame:
    """Predict the class of every cell.

    Returns:
        A table with columns ``cell``, ``predicted`` and ``prob_<class>`` for every class.
    """
    _, probabilities = class_probabilities(model, data, progress=progress, should_stop=should_stop)
    return prediction_table(model, data, probabilities)


def prediction_table(model: ExpressionClassifier, data: ExpressionData,
                     probabilities: np.ndarray) -> pd.DataFrame:
    """The ``cell,predicted,prob_<class>...`` table for given probabilities."""
    table = pd.DataFrame({
        "cell": data.cells,
        "predicted": np.asarray(model.classes)[probabilities.argmax(axis=1)],
    })
    for index, name in enumerate(model.classes):
        table[f"prob_{name}"] = probabilities[:, index].round(6)
    return table


def embed_expression(model: ExpressionClassifier, data: ExpressionData, *, progress=None,
                     should_stop=None) -> pd.DataFrame:
    """Latent vectors of every cell as a table with columns ``cell``, ``latent_0`` ... ``latent_<n-1>``."""
    check_values(data, model.preprocessor.config.values)
    latent = encode(model.network, data, model.preprocessor, should_stop=should_stop)
    table = pd.DataFrame(latent.round(6), columns=[f"latent_{i}" for i in range(latent.shape[1])])
    table.insert(0, "cell", data.cells)
    return table


def save_expression_model(model: ExpressionClassifier, directory: str | Path,
                          extra: dict | None = None) -> Path:
    """Save a fitted classifier (weights, genes, classes, preprocessing) to a model folder."""
    from napari_hematology.core.registry import save_model

    metadata = {
        "task": "expression classification",
        "classes": model.classes,
        "label_key": model.label_key,
        "knn": model.knn,
        "preprocessing": model.preprocessor.to_metadata(),
        "history": model.history,
        **(extra or {}),
    }
    return save_model(model.network, directory, metadata)


def load_expression_model(directory: str | Path) -> ExpressionClassifier:
    """Load a classifier saved by :func:`save_expression_model`.

    Raises:
        ModelFileError: The folder is missing, corrupt or holds another kind of model.
    """
    from napari_hematology.core.registry import load_model

    network, metadata = load_model(directory, expected_name=MODEL_NAME)
    return ExpressionClassifier(
        network=network,
        preprocessor=Preprocessor.from_metadata(metadata["preprocessing"]),
        classes=list(metadata["classes"]),
        label_key=metadata.get("label_key", ""),
        knn=int(metadata.get("knn", 15)),
        history=metadata.get("history", {}))
