"""Augmentation of the cell classifier's training crops: whole batches in torch.

:func:`augment` changes stain, scale, resolution and focus; how strongly is a recipe setting
(:class:`napari_hematology.core.cells.recipe.ClassifierRecipe`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_hematology.core.cells.recipe import ClassifierRecipe


def augment(images, generator=None, recipe: ClassifierRecipe | None = None):
    """Random stain, illumination, scale, focus and geometry changes of a float (n, 3, h, w) 0..255 batch.

    Args:
        images: Batch of crops as a float tensor.
        generator: Torch random generator, or None for the global one.
        recipe: Gives the strength of the stain, scale and blur changes; None uses the defaults.

    Returns:
        The augmented batch, same shape, values in 0..255.

    """
    import torch
    import torch.nn.functional as functional

    from napari_hematology.core.cells.recipe import ClassifierRecipe  # the recipe module imports this one

    recipe = recipe or ClassifierRecipe()
    count = images.shape[0]
    stain = recipe.stain_jitter

    def uniform(low: float, high: float, *shape: int):
        return torch.empty(count, *shape, device=images.device).uniform_(low, high, generator=generator)

    def around(centre: float, spread: float, *shape: int):
        return uniform(centre - spread, centre + spread, *shape)

    angle = uniform(0, 2 * np.pi)
    scale = around(1.0, recipe.scale_jitter)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, around(0, 0.08)], 1),
            torch.stack([sin * flip, cos, around(0, 0.08)], 1),
        ],
        1,
    )
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = functional.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
    if recipe.max_downsample > 1:
        images = _lower_resolution(images, recipe.max_downsample, uniform(0, 1) < 0.5, generator)
    if recipe.max_blur > 0:
        blurred = functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        images = torch.lerp(images, blurred, uniform(0, recipe.max_blur, 1, 1, 1))
    if recipe.stain_amounts > 0:
        images = _restain(images, recipe.stain_amounts, uniform)
    images = images / 255.0
    gray = images.mean(dim=1, keepdim=True)
    images = gray + (images - gray) * around(1.0, 0.15 * stain, 1, 1, 1).clamp(min=0)
    images = _rotate_hue(images, around(0, 0.06 * stain))
    images = images * around(1.0, 0.05 * stain, 3, 1, 1) + around(0, 0.03 * stain, 1, 1, 1)
    images = images.clamp(0, 1) ** around(1.0, 0.1 * stain, 1, 1, 1).clamp(min=0.3)
    if recipe.grayscale_probability > 0:
        grey = uniform(0, 1, 1, 1, 1) < recipe.grayscale_probability
        images = torch.where(grey, images.mean(dim=1, keepdim=True).expand_as(images), images)
    return images.clamp(0, 1) * 255.0


def _lower_resolution(images, max_factor: float, chosen, generator):
    """Shrink the ``chosen`` images by one random factor in [1, max_factor] and enlarge them back."""
    import torch
    import torch.nn.functional as functional

    factor = float(torch.empty(1).uniform_(1.0, max_factor, generator=generator))
    size = images.shape[-1]
    small = functional.interpolate(images, size=max(4, round(size / factor)), mode="area")
    blurred = functional.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return torch.where(chosen.view(-1, 1, 1, 1), blurred, images)


def _restain(images, spread: float, uniform):
    """Scale each crop's two stain amounts and tilt its pink stain towards purple, in optical density.

    The crop's OD is split along the fixed reference stains (:data:`~napari_hematology.core.cells.stain.
    REFERENCE_STAINS`) with the residual kept, so a factor of 1 and no tilt give the crop back. Factors are
    log-uniform in ``[exp(-spread), exp(spread)]``, the tilt uniform in ``[0, spread / 2]``: the span of
    :func:`~napari_hematology.core.cells.shifts.random_shift`, drawn afresh for every crop in every epoch.
    """
    import torch

    from napari_hematology.core.cells.stain import REFERENCE_STAINS

    stains = torch.as_tensor(REFERENCE_STAINS, device=images.device)
    od = -torch.log((images.clamp(0, 255) + 1.0) / 256.0).permute(0, 2, 3, 1)
    amounts = od @ torch.linalg.pinv(stains)
    residual = od - amounts @ stains
    factors = torch.exp(uniform(-spread, spread, 1, 1, 2))
    tilt = uniform(0, spread / 2, 1, 1, 1)
    pink = torch.lerp(stains[1].expand(len(images), 1, 1, 3), stains[0].expand(len(images), 1, 1, 3), tilt)
    pink = pink / pink.norm(dim=-1, keepdim=True)
    amounts = amounts * factors
    restained = amounts[..., :1] * stains[0] + amounts[..., 1:] * pink + residual
    return (256.0 * torch.exp(-restained.clamp(min=0)) - 1.0).clamp(0, 255).permute(0, 3, 1, 2)


def _rotate_hue(images, angle):
    """Rotate colours about the grey axis by ``angle`` radians (one angle per image)."""
    import torch

    axis = torch.full((3,), 1 / np.sqrt(3), device=images.device)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    cross = torch.tensor(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], device=images.device
    )
    outer = torch.outer(axis, axis)
    eye = torch.eye(3, device=images.device)
    rotation = cos * eye + sin * cross + (1 - cos) * outer
    return torch.einsum("nij,njhw->nihw", rotation, images)
