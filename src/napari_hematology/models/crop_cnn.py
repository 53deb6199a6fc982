"""A small convolutional network for single-cell crops, trained from scratch in minutes on a CPU."""

from __future__ import annotations

from torch import nn

from napari_hematology.models._layer_stack import LayerStack
from napari_hematology.models._registry import register_model


class CropCNN(LayerStack):
    """(3x3 convolution, batch norm, ReLU, 2x2 max-pool) per width, then a linear head.

    Maps (batch, 3, H, W) images to (batch, out_features) logits.
    """

    def __init__(self, out_features: int, widths: tuple[int, ...] | list[int], dropout: float) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        layers += [
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, out_features)
        ]
        super().__init__(*layers)


@register_model("crop_cnn")
def build_crop_cnn(
    out_features: int, widths: tuple[int, ...] | list[int] = (16, 32, 64, 64), dropout: float = 0.3
) -> CropCNN:
    """Build a plain CNN for crops.

    Used for cross-validated label-issue detection, where a network is trained per fold on a few hundred
    crops; it needs no pretrained weights.

    Args:
        out_features: Number of classes.
        widths: Channels of the convolution blocks (each block halves the resolution).
        dropout: Dropout before the linear head.

    Returns:
        A :class:`CropCNN` (a ``torch.nn.Sequential``).

    """
    return CropCNN(out_features, widths, dropout)
