"""Model architectures: a leaf package that imports only torch, timm and numpy, nothing else of the plugin.

Every model module defines its ``torch.nn.Module`` classes at module level and registers a builder
function with ``@register_model``. Importing this package is light (no torch: the segmentation reads
:mod:`~napari_hematology.models.stains` from it); :func:`build_model` and :func:`list_models` import every
model module on first use, so all builders are registered.
"""

from napari_hematology.models._registry import UnknownModelError, build_model, list_models, register_model

__all__ = ["UnknownModelError", "build_model", "list_models", "register_model"]
