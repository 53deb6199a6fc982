"""Expression models: a gene encoder (genes -> latent), its self-supervised pretext modules and a head.

One registry model, ``expression_model``, holds all three so a single ``model.safetensors`` carries the
pretrained encoder and the classifier:

- encoder: fully connected autoencoder encoder, genes -> ``hidden`` -> ``latent`` (256 by default);
- pretext: what pretraining needs besides the encoder (``ae``: decoder; ``vime``: feature and mask
  decoders; ``scarf``: projector; ``byol``: projector, predictor and the EMA target network);
- head: ``linear`` probe, feed-forward ``ffn``, ``transformer`` over latent tokens, or ``gcn`` over a
  k-nearest-neighbour cell graph (its forward takes the normalised adjacency). With ``head_input="genes"``
  a ``linear`` or ``ffn`` head reads the preprocessed genes instead of the latent (for small cohorts,
  where an encoder pretrained on a few dozen samples adds noise); the encoder still gives the embedding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from napari_hematology.models._registry import register_model

HEAD_INPUTS = ("latent", "genes")
GENE_INPUT_HEADS = ("linear", "ffn")


def _mlp(widths: list[int], dropout: float = 0.0, final_activation: bool = False):
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2 or final_activation:
            layers += [nn.LayerNorm(width_out), nn.GELU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _autoencoder_pretext(n_genes: int, hidden: list[int], latent: int, projection: int):
    return nn.ModuleDict({"decoder": _mlp([latent, *reversed(hidden), n_genes])})


def _vime_pretext(n_genes: int, hidden: list[int], latent: int, projection: int):
    decoder_widths = [latent, *reversed(hidden), n_genes]
    return nn.ModuleDict({"decoder": _mlp(decoder_widths), "mask": _mlp(decoder_widths)})


def _scarf_pretext(n_genes: int, hidden: list[int], latent: int, projection: int):
    return nn.ModuleDict({"projector": _mlp([latent, latent, projection])})


def _byol_pretext(n_genes: int, hidden: list[int], latent: int, projection: int):
    return nn.ModuleDict(
        {"projector": _mlp([latent, latent, projection]), "predictor": _mlp([projection, latent, projection])}
    )


_PRETEXT_BUILDERS = {"ae": _autoencoder_pretext, "vime": _vime_pretext, "scarf": _scarf_pretext,
                     "byol": _byol_pretext}
ENCODERS = tuple(_PRETEXT_BUILDERS)


def _ffn_classifier(width: int, n_classes: int, head_hidden: int, dropout: float, token_size: int):
    return _mlp([width, head_hidden, head_hidden, n_classes], dropout=dropout)


def _transformer_classifier(width: int, n_classes: int, head_hidden: int, dropout: float, token_size: int):
    return LatentTokenTransformer(width, n_classes, token_size, dropout)


def _gcn_classifier(width: int, n_classes: int, head_hidden: int, dropout: float, token_size: int):
    return GraphConvolutionHead(width, n_classes, head_hidden, dropout)


def _linear_classifier(width: int, n_classes: int, head_hidden: int, dropout: float, token_size: int):
    return nn.Linear(width, n_classes)


_HEAD_BUILDERS = {"ffn": _ffn_classifier, "transformer": _transformer_classifier, "gcn": _gcn_classifier,
                  "linear": _linear_classifier}
HEADS = tuple(_HEAD_BUILDERS)


def _build_head(head: str, width: int, n_classes: int, head_hidden: int, dropout: float, token_size: int):
    """The head, behind a parameter-free standardisation of its input (as in linear probing).

    The ``gcn`` head standardises its input itself.
    """
    classifier = _HEAD_BUILDERS[head](width, n_classes, head_hidden, dropout, token_size)
    if head == "gcn":
        return classifier
    return nn.Sequential(nn.BatchNorm1d(width, affine=False), classifier)


class LatentTokenTransformer(nn.Module):
    """A small transformer that reads the latent vector as a sequence of ``token_size``-wide tokens."""

    def __init__(self, latent: int, n_classes: int, token_size: int = 16, dropout: float = 0.1):
        super().__init__()
        if latent % token_size:
            raise ValueError(f"latent size {latent} is not a multiple of token size {token_size}.")
        self.token_size = token_size
        width = 64
        self.embed = nn.Linear(token_size, width)
        self.position = nn.Parameter(0.02 * torch.randn(latent // token_size, width))
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=2 * width, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_classes))

    def forward(self, latent):
        """Classify latent vectors of shape (cells, latent)."""
        tokens = latent.reshape(latent.shape[0], -1, self.token_size)
        hidden = self.encoder(self.embed(tokens) + self.position)
        return self.out(hidden.mean(dim=1))


class GraphConvolutionHead(nn.Module):
    """Two graph-convolution layers (Kipf & Welling) over a normalised kNN adjacency of the cells."""

    def __init__(self, latent: int, n_classes: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.standardise = nn.BatchNorm1d(latent, affine=False)
        self.first = nn.Linear(latent, hidden)
        self.second = nn.Linear(hidden, n_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, latent, adjacency):
        """Classify every cell of a graph.

        Args:
            latent: (cells, latent) features.
            adjacency: Sparse or dense (cells, cells) symmetric-normalised adjacency with self loops.
        """
        hidden = torch.nn.functional.gelu(adjacency @ self.first(self.standardise(latent)))
        return adjacency @ self.second(self.dropout(hidden))


class ExpressionNetwork(nn.Module):
    """Gene encoder + pretext modules + classification head (see the module docstring)."""

    def __init__(self, n_genes: int, n_classes: int, encoder: str = "ae", head: str = "ffn",
                 hidden: list[int] | tuple[int, ...] = (512,), latent: int = 256,
                 head_hidden: int = 128, dropout: float = 0.1, projection: int = 128,
                 token_size: int = 16, head_input: str = "latent"):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"Unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}.")
        if head not in HEADS:
            raise ValueError(f"Unknown head {head!r}; choose one of {', '.join(HEADS)}.")
        if head_input not in HEAD_INPUTS or (head_input == "genes" and head not in GENE_INPUT_HEADS):
            raise ValueError(f"Head input {head_input!r} is not available for the {head!r} head; genes "
                             f"can feed only the {' and '.join(GENE_INPUT_HEADS)} heads.")
        hidden = list(hidden)
        self.method = encoder
        self.head_kind = head
        self.head_input = head_input
        self.encoder = _mlp([n_genes, *hidden, latent], dropout=dropout)
        self.pretext = _PRETEXT_BUILDERS[encoder](n_genes, hidden, latent, projection)
        if encoder == "byol":
            self.target = copy.deepcopy(
                _target_network(self.encoder, self.pretext["projector"])
            ).requires_grad_(False)
        head_width = n_genes if head_input == "genes" else latent
        self.head = _build_head(head, head_width, n_classes, head_hidden, dropout, token_size)

    @property
    def uses_graph(self) -> bool:
        """Whether the head needs the kNN cell graph (``gcn``)."""
        return self.head_kind == "gcn"

    def embed(self, genes):
        """Latent vectors of preprocessed expression rows."""
        return self.encoder(genes)

    def head_features(self, genes):
        """What the head reads: the latent vectors, or the genes themselves (``head_input="genes"``)."""
        return genes if self.head_input == "genes" else self.embed(genes)

    def classify(self, features, adjacency=None):
        """Class logits from head features (and the cell graph for the ``gcn`` head)."""
        if self.uses_graph:
            return self.head(features, adjacency)
        return self.head(features)

    def forward(self, genes, adjacency=None):
        """Class logits of preprocessed expression rows."""
        return self.classify(self.head_features(genes), adjacency)


def _target_network(encoder, projector):
    return nn.Sequential(encoder, projector)


@register_model("expression_model")
def build_expression_model(**config) -> ExpressionNetwork:
    """Build an :class:`ExpressionNetwork` (keyword arguments as in its constructor)."""
    return ExpressionNetwork(**config)
