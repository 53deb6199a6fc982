"""White-cell classifier: a small timm backbone trained from scratch on normalised single-cell crops."""

from __future__ import annotations

import torch
from torch import nn

from napari_hematology.core.registry import register_model

DEFAULT_BACKBONE = "mobilenetv3_small_100"


class CellNet(nn.Module):
    """A timm network with input scaling built in, and an embedding for downstream models.

    Inputs are (N, 3, H, W) batches of RGB values in 0..255 (uint8 or float).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.embedding_size = int(getattr(network, "head_hidden_size", None) or network.num_features)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 127.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 64.0))

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Cell features: the pre-logits activations of the backbone."""
        features = self.network.forward_features(self._scale(images))
        return self.network.forward_head(features, pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.network(self._scale(images))


@register_model("cell_classifier")
def build_cell_classifier(
    num_classes: int, backbone: str = DEFAULT_BACKBONE, drop_rate: float = 0.2
) -> CellNet:
    """Build the cell classifier.

    Args:
        num_classes: Number of white-cell classes.
        backbone: timm architecture name, created without pretrained weights (nothing is downloaded).
        drop_rate: Dropout before the classification layer.

    Returns:
        A :class:`CellNet` module.

    """
    import timm

    network = timm.create_model(
        backbone, pretrained=False, num_classes=num_classes, drop_rate=drop_rate
    )
    return CellNet(network)
