"""The one training loop shared by image, expression, signal and bag (MIL) models.

A model family supplies a ``loss_fn(model, batch, epoch) -> scalar tensor``; the loop owns seeding,
device choice, batching, the optimiser and learning-rate schedule, progress, cancellation and history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        epochs: Passes over the data.
        batch_size: Samples per optimisation step.
        learning_rate: AdamW learning rate (cosine-decayed to 5% over the run).
        weight_decay: AdamW weight decay.
        seed: Seed for python, numpy and torch.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        threads: Torch CPU threads; None keeps torch's default.

    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None


@dataclass
class TrainHistory:
    """What happened during training: mean loss and optional validation metrics per epoch."""

    loss: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


LossFn = Callable[[Any, Any, int], Any]
ValidateFn = Callable[[Any], dict[str, float]]


def select_device(name: str = "auto"):
    """Pick a torch device.

    Args:
        name: ``auto`` (cuda, then mps, then cpu), or an explicit ``cpu``, ``cuda`` or ``mps``.

    Returns:
        A ``torch.device``.

    Raises:
        ValueError: Unknown name, or the device is not available on this machine.

    """
    import torch

    if name not in DEVICES:
        raise ValueError(f"Unknown device {name!r}; choose one of {', '.join(DEVICES)}.")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }[name]
    if not available:
        raise ValueError(f"Device {name!r} is not available on this machine; use 'cpu' or 'auto'.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch random generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, collate_fn=None):
    """Make a seeded DataLoader over a Dataset or a tuple of equally long tensors."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(dataset, tuple | list):
        dataset = TensorDataset(*dataset)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn
    )


def move_to(batch: Any, device) -> Any:
    """Move tensors (possibly nested in tuples, lists or dicts) to ``device``."""
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(move_to(value, device) for value in batch)
    return batch


def train(
    model,
    dataset,
    loss_fn: LossFn,
    config: TrainConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    validate: ValidateFn | None = None,
    collate_fn: Callable | None = None,
    parameters=None,
) -> TrainHistory:
    """Train ``model`` in place.

    Args:
        model: A ``torch.nn.Module``.
        dataset: A torch Dataset or a tuple of tensors of equal length.
        loss_fn: ``loss_fn(model, batch, epoch)`` returning a scalar loss tensor; the batch is already on
            the model's device.
        config: Training settings; defaults to :class:`TrainConfig`.
        progress: Called as ``progress(step, total_steps, message)``.
        should_stop: Returns True to cancel; checked before every step (raises ``Cancelled``).
        validate: Called with the model (in eval mode) after every epoch; its metrics go to the history.
        collate_fn: Batch collation for datasets of variable-size items.
        parameters: Parameters to optimise; defaults to all trainable parameters of ``model``.

    Returns:
        The training history. The model is left in eval mode on the chosen device.

    """
    import torch

    config = config or TrainConfig()
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
    model.to(device)
    loader = make_loader(dataset, config.batch_size, True, config.seed, collate_fn)
    trainable = [p for p in (parameters or model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total_steps = max(1, config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=config.learning_rate * 0.05
    )
    history = TrainHistory()
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        model.train()
        epoch_loss, batches = 0.0, 0
        for batch in loader:
            check_cancel(should_stop)
            loss = loss_fn(model, move_to(batch, device), epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += float(loss.detach())
            batches += 1
            step += 1
            if progress is not None:
                progress(step, total_steps, f"epoch {epoch + 1}/{config.epochs}")
        history.loss.append(epoch_loss / max(batches, 1))
        if validate is not None:
            model.eval()
            with torch.no_grad():
                history.validation.append(validate(model))
    model.eval()
    history.seconds = time.perf_counter() - started
    return history


def predict(
    model,
    inputs,
    batch_size: int = 256,
    *,
    forward: Callable | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> np.ndarray:
    """Run a model over many inputs in batches, without gradients.

    Args:
        model: A ``torch.nn.Module`` (already on its device).
        inputs: A tensor or numpy array whose first axis indexes samples.
        batch_size: Samples per forward pass.
        forward: ``forward(model, batch)`` returning a tensor; defaults to ``model(batch)``.
        progress: Called as ``progress(done, total, message)``.
        should_stop: Returns True to cancel (raises ``Cancelled``).

    Returns:
        The stacked outputs as a numpy array.

    """
    import torch

    forward = forward or (lambda net, batch: net(batch))
    tensor = torch.as_tensor(inputs)
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    total = len(tensor)
    with torch.no_grad():
        for start in range(0, total, batch_size):
            check_cancel(should_stop)
            batch = tensor[start : start + batch_size].to(device)
            outputs.append(forward(model, batch).float().cpu())
            if progress is not None:
                progress(min(start + batch_size, total), total, "predicting")
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return torch.cat(outputs).numpy()
