"""The table of model builders: registry names to functions that build a ``torch.nn.Module``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]

MODEL_MODULES = (
    "attention_mil", "cell_classifier", "clustering", "colour_statistics", "coteaching", "crop_cnn",
    "expression", "mlp",
)
_BUILDERS: dict[str, Builder] = {}


@cache
def _register_all() -> None:
    """Import every model module (each registers its builders as it is imported)."""
    for module in MODEL_MODULES:
        importlib.import_module(f"napari_hematology.models.{module}")


class UnknownModelError(KeyError):
    """No builder is registered under the requested name."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name``.

    Args:
        name: Registry name; must be unique.

    Returns:
        A decorator that registers the builder (a function returning a ``torch.nn.Module``).

    Raises:
        ValueError: Another builder already has that name.

    """

    def decorator(builder: Builder) -> Builder:
        if _BUILDERS.get(name, builder) is not builder:
            raise ValueError(f"A model named {name!r} is already registered.")
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures."""
    _register_all()
    return sorted(_BUILDERS)


def build_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registry name (see :func:`list_models`).
        **config: Keyword arguments of the builder; kept so the model can be saved and rebuilt.

    Returns:
        The module, with ``registry_name`` and ``registry_config`` attributes set.

    Raises:
        UnknownModelError: No model has that name (a ``KeyError``).

    """
    _register_all()
    if name not in _BUILDERS:
        raise UnknownModelError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}.")
    model = _BUILDERS[name](**config)
    model.registry_name = name
    model.registry_config = dict(config)
    return model
