"""2-D layout of per-cell values: scikit-learn PCA matches the plain SVD projection up to sign."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hematology.core.projection import principal_components


def svd_projection(values: np.ndarray, n_components: int) -> np.ndarray:
    centred = values - values.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes[:n_components].T


def test_matches_svd_projection_up_to_sign():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, 6)) * [5.0, 3.0, 1.0, 0.5, 0.2, 0.1] + 7.0
    projected = principal_components(values)
    expected = svd_projection(values, 2)
    assert projected.shape == (200, 2) and projected.dtype == np.float32
    for column in range(2):
        sign = np.sign(projected[:, column] @ expected[:, column])
        np.testing.assert_allclose(sign * projected[:, column], expected[:, column], rtol=1e-4, atol=1e-4)
    assert projected[:, 0].var() > projected[:, 1].var()


@pytest.mark.parametrize(
    ("shape", "nonzero_columns"), [((1, 5), 0), ((0, 5), 0), ((2, 5), 1), ((30, 1), 1)]
)
def test_components_the_data_cannot_give_are_zero(shape, nonzero_columns):
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) ** 1.5
    projected = principal_components(values)
    assert projected.shape == (shape[0], 2)
    np.testing.assert_allclose(projected[:, nonzero_columns:], 0, atol=1e-5)
    if nonzero_columns:
        assert np.abs(projected[:, 0]).max() > 0
