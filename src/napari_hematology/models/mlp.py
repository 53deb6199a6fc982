"""A small multi-layer perceptron: the simplest registry model, shared by tabular heads."""

from __future__ import annotations

from napari_hematology.core.registry import register_model


@register_model("mlp")
def build_mlp(in_features: int, out_features: int, hidden: tuple[int, ...] | list[int] = (128,),
              dropout: float = 0.1):
    """Build a multi-layer perceptron.

    Args:
        in_features: Input width.
        out_features: Output width (classes, or latent size).
        hidden: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.

    Returns:
        A ``torch.nn.Sequential``.

    """
    from torch import nn

    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
