"""Laying out many-dimensional per-cell values in 2-D for plots (principal component analysis)."""

from __future__ import annotations

import numpy as np


def principal_components(values: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Project rows onto their first principal components with scikit-learn's PCA (exact SVD).

    Args:
        values: ``(rows, features)`` array.
        n_components: Components to return.

    Returns:
        ``(rows, n_components)`` float32 coordinates, centred; components that the data cannot give
        (fewer than two rows, or fewer features or rows than components) are zero. The sign of each
        component is arbitrary.

    """
    from sklearn.decomposition import PCA

    values = np.asarray(values)
    if len(values) < 2:
        return np.zeros((len(values), n_components), dtype=np.float32)
    available = min(n_components, *values.shape)
    projected = PCA(n_components=available, svd_solver="full").fit_transform(values)
    return np.pad(projected, ((0, 0), (0, n_components - available))).astype(np.float32)
