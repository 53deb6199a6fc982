"""Two networks of the same registered architecture, trained together by co-teaching."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from napari_hematology.models._registry import build_model, register_model


class CoTeachingPair(nn.Module):
    """Two differently initialised copies of a registered classifier; predicts their mean logits."""

    def __init__(self, member: str, member_config: dict[str, Any]) -> None:
        super().__init__()
        self.members = nn.ModuleList([build_model(member, **member_config) for _ in range(2)])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean of the members' logits."""
        return (self.members[0](inputs) + self.members[1](inputs)) / 2


@register_model("coteaching_pair")
def build_coteaching_pair(member: str = "mlp", member_config: dict[str, Any] | None = None) -> CoTeachingPair:
    """Build a co-teaching pair.

    Train it with :func:`napari_hematology.core.losses.co_teaching`.

    Args:
        member: Registry name of the classifier to duplicate.
        member_config: Keyword config of that classifier.

    Returns:
        A :class:`CoTeachingPair`, whose ``members`` ModuleList holds the two networks.

    """
    return CoTeachingPair(member, member_config or {})
