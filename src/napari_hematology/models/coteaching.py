"""Two networks of the same registered architecture, trained together by co-teaching."""

from __future__ import annotations

from typing import Any

from napari_hematology.core.registry import create_model, register_model


@register_model("coteaching_pair")
def build_coteaching_pair(member: str = "mlp", member_config: dict[str, Any] | None = None):
    """Build two differently initialised copies of a registered classifier.

    The pair predicts the mean of its members' logits; train it with
    :func:`napari_hematology.core.losses.co_teaching`.

    Args:
        member: Registry name of the classifier to duplicate.
        member_config: Keyword config of that classifier.

    Returns:
        A ``torch.nn.Module`` with a ``members`` ModuleList of two networks.

    """
    from torch import nn

    class CoTeachingPair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = member_config or {}
            self.members = nn.ModuleList([create_model(member, **config) for _ in range(2)])

        def forward(self, inputs):
            return (self.members[0](inputs) + self.members[1](inputs)) / 2

    return CoTeachingPair()
