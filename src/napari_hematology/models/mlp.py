"""A small multi-layer perceptron: the simplest registry model, shared by tabular heads."""

from __future__ import annotations

from torch import nn

from napari_hematology.models._layer_stack import LayerStack
from napari_hematology.models._registry import register_model


class MLP(LayerStack):
    """(linear, GELU, dropout) per hidden width, then a linear output layer."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...] | list[int],
                 dropout: float) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


@register_model("mlp")
def build_mlp(in_features: int, out_features: int, hidden: tuple[int, ...] | list[int] = (128,),
              dropout: float = 0.1) -> MLP:
    """Build a multi-layer perceptron.

    Args:
        in_features: Input width.
        out_features: Output width (classes, or latent size).
        hidden: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.

    Returns:
        An :class:`MLP` (a ``torch.nn.Sequential``).

    """
    return MLP(in_features, out_features, hidden, dropout)
