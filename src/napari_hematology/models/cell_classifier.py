"""White-cell classifier: a small timm backbone trained from scratch, optionally with colour statistics."""

from __future__ import annotations

import torch
from torch import nn

from napari_hematology.models._registry import register_model
from napari_hematology.models.colour_statistics import STATISTICS_SIZE, colour_statistics
from napari_hematology.models.stains import REFERENCE_STAINS

DEFAULT_BACKBONE = "mobilenetv3_small_100"
# Each crop's purple and pink stain amounts are scaled so that their 99th percentiles reach these levels
# (about the median over PBC's training crops of the purple one; the pink one of PBC, BCCD and wbc_seg
# lie around 0.4-0.55), by at most MAX_STAIN_FACTOR either way.
STAIN_PERCENTILE = 0.99
STAIN_LEVELS = (2.0, 0.5)
MAX_STAIN_FACTOR = 3.0


class CellNet(nn.Module):
    """A timm network, optionally with the crop's colour statistics, feeding one linear classifier.

    Inputs are (N, 3, H, W) batches of RGB values in 0..255 (uint8 or float).

    Args:
        network: timm backbone without its classification layer.
        num_classes: Number of classes.
        drop_rate: Dropout before the classification layer.
        colour_statistics: Feed the fixed colour statistics to the classifier next to the backbone.
        per_crop_norm: Centre each crop's channels on their own means (one spread for all three
            channels) instead of on fixed values, which removes a crop's overall stain cast.
        standardise_stains: Bring each crop's two stain amounts to fixed levels first
            (:func:`standardise_stain_amounts`), for the network and the colour statistics alike.

    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        drop_rate: float,
        colour_statistics: bool = True,
        per_crop_norm: bool = False,
        standardise_stains: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.per_crop_norm = per_crop_norm
        self.standardise_stains = standardise_stains
        self.statistics_norm = nn.BatchNorm1d(STATISTICS_SIZE) if colour_statistics else None
        network_size = int(getattr(network, "head_hidden_size", None) or network.num_features)
        self.embedding_size = network_size + (STATISTICS_SIZE if colour_statistics else 0)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.embedding_size, num_classes)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 127.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 64.0))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Cell features: the backbone's pre-logits activations and the normalised colour statistics."""
        images = self.standardised(images)
        learned = self.network(self.normalise(images))
        if self.statistics_norm is None:
            return learned
        return torch.cat([learned, self.statistics_norm(colour_statistics(images))], 1)

    def standardised(self, images: torch.Tensor) -> torch.Tensor:
        """The crops as the network and the colour statistics see them: float, stains standardised if set."""
        images = images.float()
        return standardise_stain_amounts(images) if self.standardise_stains else images

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Network input: fixed centring and scaling, or each crop's own channel means and spread."""
        if not self.per_crop_norm:
            return (images - self.mean) / self.std
        centred = images - images.mean(dim=(2, 3), keepdim=True)
        return centred / centred.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.logits(self.embed(images))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of features that :meth:`embed` gave."""
        return self.classifier(self.dropout(features))


def standardise_stain_amounts(images: torch.Tensor) -> torch.Tensor:
    """Scale each crop's purple and pink stain amounts so that their 99th percentiles reach fixed levels.

    A crop's optical density is split along the reference stains
    (:data:`~napari_hematology.models.stains.REFERENCE_STAINS`; the residual is kept) and each amount
    multiplied by one factor per crop (within :data:`MAX_STAIN_FACTOR` either way), so that a paler or
    darker stain of another lab reaches the network as this one's: how dark a nucleus is relative to its
    cytoplasm and red cells stays, how dark the whole crop is goes.

    Args:
        images: (n, 3, h, w) white-balanced RGB values in 0..255.

    Returns:
        The restained batch, same shape, 0..255.

    """
    stains = images.new_tensor(REFERENCE_STAINS)
    od = -torch.log((images.clamp(0, 255) + 1.0) / 256.0).flatten(2).transpose(1, 2)
    amounts = od @ torch.linalg.pinv(stains)
    residual = od - amounts @ stains
    levels = torch.quantile(amounts, STAIN_PERCENTILE, dim=1, keepdim=True).clamp_min(1e-3)
    factors = (images.new_tensor(STAIN_LEVELS) / levels).clamp(1 / MAX_STAIN_FACTOR, MAX_STAIN_FACTOR)
    restained = (amounts * factors) @ stains + residual
    pixels = 256.0 * torch.exp(-restained.clamp_min(0)) - 1.0
    return pixels.clamp(0, 255).transpose(1, 2).reshape(images.shape)


@register_model("cell_classifier")
def build_cell_classifier(
    num_classes: int,
    backbone: str = DEFAULT_BACKBONE,
    drop_rate: float = 0.2,
    colour_statistics: bool = True,
    per_crop_norm: bool = False,
    standardise_stains: bool = False,
) -> CellNet:
    """Build the cell classifier.

    Args:
        num_classes: Number of white-cell classes.
        backbone: timm architecture name, created without pretrained weights (nothing is downloaded).
        drop_rate: Dropout before the classification layer.
        colour_statistics: Feed fixed stain colour statistics to the classifier too.
        per_crop_norm: Centre each crop on its own channel means (see :class:`CellNet`).
        standardise_stains: Bring each crop's stain amounts to fixed levels (see :class:`CellNet`).

    Returns:
        A :class:`CellNet` module.

    """
    import timm

    network = timm.create_model(backbone, pretrained=False, num_classes=0, drop_rate=drop_rate)
    return CellNet(network, num_classes, drop_rate, colour_statistics, per_crop_norm, standardise_stains)
