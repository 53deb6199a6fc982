"""Probability calibration shared by the cell classifier and the bag models: softmax with a temperature."""

from __future__ import annotations

import numpy as np


def negative_log_likelihood(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-probability of the true classes."""
    return -float(np.mean(np.log(probabilities[np.arange(len(targets)), targets] + 1e-12)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Find the temperature that minimises the negative log-likelihood of held-out logits.

    It is kept within [0.5, 20]: when every held-out sample is right, the likelihood keeps growing as the
    temperature falls, and sharpening beyond 2x would only make the model overconfident.
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return negative_log_likelihood(softmax(logits, float(np.exp(log_t))), targets)

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.5), np.log(20.0)), method="bounded").x))


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Gap between confidence and accuracy of the top class, averaged over equal-width confidence bins.

    Args:
        probabilities: (n, classes) rows summing to 1.
        targets: (n,) true class indices.
        bins: Number of confidence bins over [0, 1].

    Returns:
        The sample-weighted mean of |accuracy - mean confidence| over the bins (0: calibrated).

    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [
        abs(correct[which == index].mean() - confidence[which == index].mean()) * np.mean(which == index)
        for index in range(bins)
        if np.any(which == index)
    ]
    return float(np.sum(gaps))
