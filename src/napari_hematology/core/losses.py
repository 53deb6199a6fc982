"""Classification losses for the shared training loop, including losses that tolerate wrong labels.

Every factory returns a ``loss_fn(model, batch, epoch)`` for :func:`napari_hematology.core.training.train`.
The batch is ``(inputs, targets, ...)`` (extra items are ignored) with integer class targets; ``forward``
turns ``(model, inputs)`` into logits and defaults to ``model(inputs)``, so any classifier of the project
can use them.

- ``ce``: plain cross-entropy.
- ``gce``: generalized cross-entropy (Zhang & Sabuncu 2018), between CE (q -> 0) and MAE (q = 1).
- ``sce``: symmetric cross-entropy (Wang et al. 2019), CE plus reverse CE.
- ``small_loss``: small-loss sample selection: each step trains only on the samples with the smallest
  loss, dropping a fraction that ramps up to ``forget_rate`` (the expected noise rate).
- ``coteaching``: co-teaching (Han et al. 2018) for a ``coteaching_pair`` model: each of two networks
  picks its small-loss samples to train the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_hematology.core.errors import InputError
from napari_hematology.core.training import LossFn

Forward = Callable[[Any, Any], Any]
LOSSES = ("ce", "gce", "sce", "small_loss", "coteaching")


def _default_forward(model, inputs):
    return model(inputs)


def _split(batch) -> tuple[Any, Any]:
    inputs, targets = batch[0], batch[1]
    return inputs, targets.long()


def cross_entropy(forward: Forward | None = None, label_smoothing: float = 0.0) -> LossFn:
    """Plain cross-entropy.

    Args:
        forward: ``forward(model, inputs)`` returning logits; defaults to ``model(inputs)``.
        label_smoothing: Label smoothing of ``torch.nn.functional.cross_entropy``.

    Returns:
        A loss function for the shared training loop.

    """
    import torch.nn.functional as F

    forward = forward or _default_forward

    def loss_fn(model, batch, epoch: int):
        inputs, targets = _split(batch)
        return F.cross_entropy(forward(model, inputs), targets, label_smoothing=label_smoothing)

    return loss_fn


def generalized_cross_entropy(q: float = 0.7, forward: Forward | None = None) -> LossFn:
    """Generalized cross-entropy ``(1 - p_y ** q) / q``: bounded, so wrong labels pull less.

    Args:
        q: In (0, 1]; larger is more robust and slower to fit.
        forward: ``forward(model, inputs)`` returning logits.

    Returns:
        A loss function for the shared training loop.

    """
    import torch

    if not 0.0 < q <= 1.0:
        raise InputError(f"Generalized cross-entropy needs 0 < q <= 1, got q={q}.")
    forward = forward or _default_forward

    def loss_fn(model, batch, epoch: int):
        inputs, targets = _split(batch)
        probabilities = torch.softmax(forward(model, inputs), dim=1)
        given = probabilities.gather(1, targets[:, None]).squeeze(1).clamp_min(1e-7)
        return ((1.0 - given**q) / q).mean()

    return loss_fn


def symmetric_cross_entropy(alpha: float = 0.1, beta: float = 1.0, forward: Forward | None = None) -> LossFn:
    """Symmetric cross-entropy ``alpha * CE + beta * reverse CE`` (log 0 clipped to -4).

    Args:
        alpha: Weight of the ordinary cross-entropy.
        beta: Weight of the reverse cross-entropy, the noise-tolerant part.
        forward: ``forward(model, inputs)`` returning logits.

    Returns:
        A loss function for the shared training loop.

    """
    import torch
    import torch.nn.functional as F

    forward = forward or _default_forward

    def loss_fn(model, batch, epoch: int):
        inputs, targets = _split(batch)
        logits = forward(model, inputs)
        probabilities = torch.softmax(logits, dim=1).clamp(1e-7, 1.0)
        one_hot = F.one_hot(targets, logits.shape[1]).float().clamp_min(1e-4)
        reverse = -(probabilities * one_hot.log()).sum(dim=1).mean()
        return alpha * F.cross_entropy(logits, targets) + beta * reverse

    return loss_fn


def info_nce(first, second, temperature: float):
    """Symmetric InfoNCE between two batches of projections whose rows are two views of the same samples.

    The self-supervised pretext loss of crop and expression pretraining: each row must pick out its
    partner among all rows of the other batch.
    """
    import torch
    import torch.nn.functional as F

    first, second = F.normalize(first, dim=1), F.normalize(second, dim=1)
    logits = first @ second.T / temperature
    targets = torch.arange(len(first), device=first.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def kept_fraction(epoch: int, forget_rate: float, warmup_epochs: int) -> float:
    """Fraction of each batch kept by small-loss selection at ``epoch`` (linear ramp, then constant)."""
    ramp = min(1.0, epoch / warmup_epochs) if warmup_epochs > 0 else 1.0
    return 1.0 - forget_rate * ramp


def _small_loss_indices(losses, keep: float):
    count = max(1, int(round(keep * len(losses))))
    return losses.detach().argsort()[:count]


def _check_forget_rate(forget_rate: float) -> None:
    if not 0.0 <= forget_rate < 1.0:
        raise InputError(f"forget_rate must be in [0, 1), got {forget_rate}; use the expected noise rate.")


def small_loss_selection(
    forget_rate: float = 0.2, warmup_epochs: int = 5, forward: Forward | None = None
) -> LossFn:
    """Cross-entropy on the small-loss part of every batch only.

    Networks fit clean labels before wrong ones, so the samples with the largest loss are the likely
    wrong labels; their share dropped grows from 0 to ``forget_rate`` over ``warmup_epochs``.

    Args:
        forget_rate: Fraction of each batch finally dropped (about the expected noise rate).
        warmup_epochs: Epochs over which the dropped fraction ramps up.
        forward: ``forward(model, inputs)`` returning logits.

    Returns:
        A loss function for the shared training loop.

    """
    import torch.nn.functional as F

    _check_forget_rate(forget_rate)
    forward = forward or _default_forward

    def loss_fn(model, batch, epoch: int):
        inputs, targets = _split(batch)
        losses = F.cross_entropy(forward(model, inputs), targets, reduction="none")
        keep = _small_loss_indices(losses, kept_fraction(epoch, forget_rate, warmup_epochs))
        return losses[keep].mean()

    return loss_fn


def co_teaching(forget_rate: float = 0.2, warmup_epochs: int = 5) -> LossFn:
    """Co-teaching for a ``coteaching_pair`` model (see :mod:`napari_hematology.models.coteaching`).

    Each network ranks the batch by its own loss and the other network trains on those small-loss
    samples, so one network's mistakes are not reinforced by itself.

    Args:
        forget_rate: Fraction of each batch finally dropped (about the expected noise rate).
        warmup_epochs: Epochs over which the dropped fraction ramps up.

    Returns:
        A loss function for the shared training loop.

    """
    import torch.nn.functional as F

    _check_forget_rate(forget_rate)

    def loss_fn(model, batch, epoch: int):
        if not hasattr(model, "members"):
            raise InputError("Co-teaching needs a 'coteaching_pair' model (two networks); use small_loss.")
        inputs, targets = _split(batch)
        first, second = (
            F.cross_entropy(member(inputs), targets, reduction="none") for member in model.members
        )
        keep = kept_fraction(epoch, forget_rate, warmup_epochs)
        chosen_by_first = _small_loss_indices(first, keep)
        chosen_by_second = _small_loss_indices(second, keep)
        return first[chosen_by_second].mean() + second[chosen_by_first].mean()

    return loss_fn


def make_loss(name: str = "ce", forward: Forward | None = None, **params: float) -> LossFn:
    """Build a classification loss by name.

    Args:
        name: One of ``ce``, ``gce``, ``sce``, ``small_loss``, ``coteaching``.
        forward: ``forward(model, inputs)`` returning logits (not used by ``coteaching``).
        **params: Parameters of the chosen loss (``q``; ``alpha``, ``beta``; ``forget_rate``,
            ``warmup_epochs``; ``label_smoothing``).

    Returns:
        A loss function for the shared training loop.

    Raises:
        InputError: Unknown loss name or parameter.

    """
    factories: dict[str, Callable[..., LossFn]] = {
        "ce": cross_entropy,
        "gce": generalized_cross_entropy,
        "sce": symmetric_cross_entropy,
        "small_loss": small_loss_selection,
        "coteaching": co_teaching,
    }
    if name not in factories:
        raise InputError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")
    if name != "coteaching":
        params["forward"] = forward
    try:
        return factories[name](**params)
    except TypeError as error:
        raise InputError(f"Bad parameter for loss {name!r}: {error}.") from error
