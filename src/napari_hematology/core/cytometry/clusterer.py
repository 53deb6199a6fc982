"""A fitted deep clustering model with the standardisation it expects, saved through the model registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.cytometry.cluster_config import METHODS
from napari_hematology.core.progress import StopCallback
from napari_hematology.core.training import predict


@dataclass
class Clusterer:
    """A fitted model with the standardisation it expects.

    Attributes:
        model: The IDEC or VaDE module (eval mode).
        channels: Channel names, in column order.
        mean: Per-channel mean of the training events (after transform).
        std: Per-channel scale (one value shared by all channels: their pooled standard deviation).
        populations: Cluster names.
        extra: Other metadata saved with the model (transform, training time, ...).

    """

    model: object
    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    populations: list[str]
    extra: dict = field(default_factory=dict)

    def standardize(self, values: np.ndarray):
        """Float32 tensor of standardised values."""
        import torch

        return torch.as_tensor(((values - self.mean) / self.std).astype(np.float32))

    def assign(self, values: np.ndarray, *, should_stop: StopCallback | None = None) -> np.ndarray:
        """Soft cluster assignments ``(events, clusters)`` of transformed events."""
        return predict(self.model, self.standardize(values), batch_size=8192, should_stop=should_stop)

    def embed(self, values: np.ndarray) -> np.ndarray:
        """Latent coordinates ``(events, latent_dim)`` of transformed events."""
        return predict(
            self.model, self.standardize(values), batch_size=8192, forward=lambda net, x: net.embed(x)
        )

    def save(self, directory: str | Path) -> Path:
        """Save through the model registry (safetensors + config.json)."""
        from napari_hematology.core.registry import save_model

        metadata = {
            "channels": self.channels,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "populations": self.populations,
            **self.extra,
        }
        return save_model(self.model, directory, metadata)


def load_clusterer(directory: str | Path) -> Clusterer:
    """Load a model saved by :meth:`Clusterer.save`.

    Raises:
        ModelFileError: The folder is missing, corrupt or holds another kind of model.

    """
    from napari_hematology.core.errors import ModelFileError
    from napari_hematology.core.registry import load_model, read_model_config

    name = read_model_config(directory)["name"]
    if name not in METHODS:
        raise ModelFileError(f"{directory} holds a {name!r} model, not a cytometry clustering model.")
    model, metadata = load_model(directory, expected_name=name)
    known = {"channels", "mean", "std", "populations"}
    return Clusterer(
        model=model,
        channels=list(metadata["channels"]),
        mean=np.asarray(metadata["mean"]),
        std=np.asarray(metadata["std"]),
        populations=list(metadata["populations"]),
        extra={k: v for k, v in metadata.items() if k not in known},
    )
