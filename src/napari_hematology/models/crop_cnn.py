"""A small convolutional network for single-cell crops, trained from scratch in minutes on a CPU."""

from __future__ import annotations

from napari_hematology.core.registry import register_model


@register_model("crop_cnn")
def build_crop_cnn(
    out_features: int, widths: tuple[int, ...] | list[int] = (16, 32, 64, 64), dropout: float = 0.3
):
    """Build a plain CNN: (3x3 convolution, batch norm, ReLU, 2x2 max-pool) per width, then a linear head.

    Used for cross-validated label-issue detection, where a network is trained per fold on a few hundred
    crops; it needs no pretrained weights.

    Args:
        out_features: Number of classes.
        widths: Channels of the convolution blocks (each block halves the resolution).
        dropout: Dropout before the linear head.

    Returns:
        A ``torch.nn.Sequential`` mapping (batch, 3, H, W) images to (batch, out_features) logits.

    """
    from torch import nn

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
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, out_features)]
    return nn.Sequential(*layers)
