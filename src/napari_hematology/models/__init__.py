"""Model architectures: a leaf package that imports only torch, timm and numpy, nothing else of the plugin.

Every model module defines its ``torch.nn.Module`` classes at module level and registers a builder
function with ``@register_model``. Importing this package imports every model module, so all builders
are registered; :func:`build_model` then builds one from its name and keyword config.
"""

from napari_hematology.models import (
    attention_mil,
    cell_classifier,
    clustering,
    colour_statistics,
    coteaching,
    crop_cnn,
    expression,
    mlp,
)
from napari_hematology.models._registry import UnknownModelError, build_model, list_models, register_model

__all__ = [
    "UnknownModelError",
    "attention_mil",
    "build_model",
    "cell_classifier",
    "clustering",
    "colour_statistics",
    "coteaching",
    "crop_cnn",
    "expression",
    "list_models",
    "mlp",
    "register_model",
]
