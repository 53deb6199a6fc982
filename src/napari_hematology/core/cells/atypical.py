"""Atypical score: how far a cell's embedding lies from the training cells, as a share of them.

A :class:`TypicalityReference` is fitted on the classifier's embeddings of its own training crops, each
crop assigned to the class the model calls it (so partial or missing labels do not matter). Embeddings
are standardised, reduced to their main principal components and whitened with the pooled within-class
covariance (Ledoit-Wolf shrunk, so that small fits stay well conditioned). A cell's distance is its
Mahalanobis distance to the nearest class mean; its score is the share of training cells lying closer to
their nearest mean (an empirical distribution stored as quantiles). A score of 0.99 reads "further from
every class than 99% of the training cells"; cells beyond every training cell score 1.

The reference is stored next to the model as ``atypical.safetensors`` (numpy arrays, no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import ModelFileError

REFERENCE_FILE = "atypical.safetensors"
COMPONENTS = 32
QUANTILES = 101
MIN_SPREAD = 1e-6


@dataclass(frozen=True)
class TypicalityReference:
    """Where the training cells lie in embedding space.

    Attributes:
        centre: (d,) mean training embedding.
        projection: (d, k) float32 map from a centred embedding to the whitened principal components.
        class_means: (c, k) whitened mean of the cells assigned to each class that had any.
        distance_quantiles: (q,) quantiles of the training cells' distances, at evenly spaced shares.

    """

    centre: np.ndarray
    projection: np.ndarray
    class_means: np.ndarray
    distance_quantiles: np.ndarray

    @property
    def embedding_size(self) -> int:
        """Length of the embeddings the reference was fitted on."""
        return len(self.centre)

    def whiten(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, d) embeddings to (n, k) whitened principal components."""
        return (np.asarray(embeddings, dtype=np.float32) - self.centre) @ self.projection

    def score_whitened(self, whitened: np.ndarray) -> np.ndarray:
        """(n,) atypical scores in [0, 1] of cells already passed through :meth:`whiten`."""
        shares = np.linspace(0.0, 1.0, len(self.distance_quantiles))
        return np.interp(nearest_distance(whitened, self.class_means), self.distance_quantiles, shares)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n,) atypical scores in [0, 1]: the share of training cells closer to their class."""
        return self.score_whitened(self.whiten(embeddings))


def fit_reference(
    embeddings: np.ndarray, assigned: np.ndarray, components: int = COMPONENTS, quantiles: int = QUANTILES
) -> TypicalityReference:
    """Fit a reference on training-cell embeddings.

    Args:
        embeddings: (n, d) embeddings of the training cells (n >= 1).
        assigned: (n,) class index of each cell (the model's own call).
        components: Principal components kept (fewer when there are fewer cells or features).
        quantiles: Stored quantiles of the training distances.

    Returns:
        The reference.

    """
    from sklearn.decomposition import PCA

    embeddings = np.asarray(embeddings, dtype=np.float64)
    centre = embeddings.mean(axis=0)
    spread = np.maximum(embeddings.std(axis=0), MIN_SPREAD)
    standardised = (embeddings - centre) / spread
    kept = max(1, min(components, len(embeddings) - 1, embeddings.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):  # one cell: its explained variance is 0 / 0
        principal = PCA(n_components=kept, svd_solver="full").fit(standardised).components_.T
    reduced = standardised @ principal
    classes, assigned = np.unique(np.asarray(assigned), return_inverse=True)
    means = np.stack([reduced[assigned == index].mean(axis=0) for index in range(len(classes))])
    whitening = _whitening(reduced - means[assigned])
    class_means = means @ whitening
    distances = nearest_distance(reduced @ whitening, class_means)
    return TypicalityReference(
        centre=centre.astype(np.float32),
        projection=((principal / spread[:, None]) @ whitening).astype(np.float32),
        class_means=class_means.astype(np.float32),
        distance_quantiles=np.quantile(distances, np.linspace(0.0, 1.0, quantiles)).astype(np.float32),
    )


def nearest_distance(points: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(n,) Euclidean distance of each point to the nearest of ``means`` (Mahalanobis once whitened)."""
    return np.sqrt(np.square(points[:, None, :] - means[None, :, :]).sum(axis=2)).min(axis=1)


def _whitening(residuals: np.ndarray) -> np.ndarray:
    """(k, k) matrix that turns the pooled within-class covariance of ``residuals`` into the identity."""
    from sklearn.covariance import ledoit_wolf

    covariance = ledoit_wolf(residuals, assume_centered=True)[0]
    if np.trace(covariance) <= 0:
        return np.eye(len(covariance))
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, values.max() * MIN_SPREAD)
    return vectors @ np.diag(1.0 / np.sqrt(values)) @ vectors.T


def save_reference(reference: TypicalityReference | None, directory: str | Path) -> None:
    """Write ``atypical.safetensors`` into a model folder; None removes a stale one.

    Args:
        reference: The fitted reference, or None for a model without one.
        directory: The model folder (it exists).

    """
    from safetensors.numpy import save_file

    path = Path(directory) / REFERENCE_FILE
    if reference is None:
        path.unlink(missing_ok=True)
        return
    save_file({name: np.ascontiguousarray(value) for name, value in vars(reference).items()}, str(path))


def load_reference(directory: str | Path, embedding_size: int) -> TypicalityReference | None:
    """Read a model folder's ``atypical.safetensors``.

    Args:
        directory: The model folder.
        embedding_size: Embedding length of the folder's model.

    Returns:
        The reference, or None when the folder has none.

    Raises:
        ModelFileError: The file is corrupt or does not fit the model.

    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(directory) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        reference = TypicalityReference(**load_file(str(path)))
    except (SafetensorError, OSError, TypeError) as error:
        raise ModelFileError(f"{path}: not a readable atypical-score reference ({error}).") from error
    if reference.embedding_size != embedding_size or reference.projection.shape[0] != embedding_size:
        raise ModelFileError(
            f"{path} was fitted on another model's embeddings; delete it (the atypical score then falls "
            "back to the model's uncertainty) or retrain the model."
        )
    return reference
