"""Gated-attention multiple-instance learning (Ilse et al. 2018).

Optionally one attention branch per class (as in SCEMILA, Hehr et al. 2023): one bag of cell features in,
class logits and per-cell attention out.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_hematology.models._registry import register_model


class AttentionMIL(nn.Module):
    """Gated attention pooling over the instances of padded bags.

    Buffers saved with the weights: ``feature_mean``/``feature_std`` (instance feature standardisation,
    set from the training bags) and ``temperature`` (probability calibration, set after training).
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: int = 128,
        attention_hidden: int = 64,
        dropout: float = 0.25,
        branch_per_class: bool = False,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.branch_per_class = branch_per_class
        branches = n_classes if branch_per_class else 1
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))
        self.register_buffer("temperature", torch.ones(()))
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout))
        self.attention_value = nn.Linear(hidden, attention_hidden)
        self.attention_gate = nn.Linear(hidden, attention_hidden)
        self.attention_out = nn.Linear(attention_hidden, branches)
        if branch_per_class:
            self.class_weight = nn.Parameter(torch.randn(n_classes, hidden) * hidden**-0.5)
            self.class_bias = nn.Parameter(torch.zeros(n_classes))
        else:
            self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, features, mask=None):
        """Classify bags.

        Args:
            features: Instance features ``(bags, cells, in_features)``, or ``(cells, in_features)``.
            mask: ``(bags, cells)`` booleans, True for real cells (padding is False); None = all real.

        Returns:
            ``(logits, attention)``: logits ``(bags, classes)`` (divide by ``temperature`` for calibrated
            probabilities) and attention ``(bags, branches, cells)`` summing to 1 over the real cells.

        """
        if features.dim() == 2:
            features = features.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        hidden = self.embed((features - self.feature_mean) / self.feature_std)
        gated = torch.tanh(self.attention_value(hidden)) * torch.sigmoid(self.attention_gate(hidden))
        scores = self.attention_out(gated).transpose(1, 2)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        attention = torch.softmax(scores, dim=-1)
        pooled = attention @ hidden
        if self.branch_per_class:
            logits = (pooled * self.class_weight).sum(-1) + self.class_bias
        else:
            logits = self.classifier(pooled.squeeze(1))
        return logits, attention


@register_model("attention_mil")
def build_attention_mil(
    in_features: int,
    n_classes: int,
    hidden: int = 128,
    attention_hidden: int = 64,
    dropout: float = 0.25,
    branch_per_class: bool = False,
) -> AttentionMIL:
    """Build a gated-attention MIL classifier.

    Args:
        in_features: Width of the per-cell features.
        n_classes: Number of bag classes.
        hidden: Width of the per-cell embedding.
        attention_hidden: Width of the gated attention layer.
        dropout: Dropout on the per-cell embedding.
        branch_per_class: One attention branch per class (SCEMILA) instead of one shared branch.

    Returns:
        An :class:`AttentionMIL` module.

    """
    return AttentionMIL(in_features, n_classes, hidden, attention_hidden, dropout, branch_per_class)
