"""Base class of models that are a plain stack of layers built from their keyword config."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class LayerStack(nn.Sequential):
    """A ``torch.nn.Sequential`` whose subclasses build their layers from config in ``__init__``.

    The state-dict keys are those of a plain ``nn.Sequential`` (``0.weight``, ...). A slice, such as
    ``model[:-1]`` for the network without its head, is a plain ``nn.Sequential`` of the same layers,
    because a subclass cannot be rebuilt from layers alone.
    """

    def __getitem__(self, index: int | slice) -> nn.Module:
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)
