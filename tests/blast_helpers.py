"""A small stand-in for the cell classifier, so pipeline and widget tests need no trained weights."""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "blast"]


class FakeClassifier:
    """Calls a cell a blast with probability 0.8 when its crop is wider than ``blast_above`` pixels."""

    classes = CLASSES

    def __init__(self, blast_above: int = 0) -> None:
        self.blast_above = blast_above
        self.calls = 0

    def predict(self, crops, progress=None, should_stop=None) -> pd.DataFrame:
        """One row per crop: label, blast_probability, prob_<class>."""
        self.calls += 1
        rows = []
        for crop in crops:
            assert crop.ndim == 3 and crop.shape[-1] == 3
            blast = 0.8 if crop.shape[1] > self.blast_above else 0.1
            probabilities = np.full(len(CLASSES), (1 - blast) / (len(CLASSES) - 1))
            probabilities[-1] = blast
            rows.append(probabilities)
        matrix = np.array(rows).reshape(-1, len(CLASSES))
        table = pd.DataFrame({f"prob_{name}": matrix[:, i] for i, name in enumerate(CLASSES)})
        table.insert(0, "blast_probability", matrix[:, -1])
        table.insert(0, "label", np.asarray(CLASSES, dtype=object)[matrix.argmax(axis=1)])
        return table


def background_only(shape=(300, 400)) -> np.ndarray:
    """A smear-like field with red cells on a bright background and no white cell."""
    rng = np.random.default_rng(0)
    image = np.full((*shape, 3), (225, 222, 210), dtype=np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(12):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < 30**2
        image[inside] = (205, 150, 160)
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
