"""The one training loop shared by image, expression, signal and bag (MIL) models.

A model family supplies a ``loss_fn(model, batch, epoch) -> scalar tensor``; the loop owns device choice,
batching, the optimiser and learning-rate schedule, progress, cancellation, early stopping and history.
It changes no global state of the caller: shuffling has its own seeded generator, and the randomness
inside the loop (dropout, augmentation) draws from torch's global generator seeded for the call and
restored to the caller's state afterwards (:func:`seeded`). Thread counts are the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

DEVICES = ("auto", "cpu", "cuda", "mps")
TRAINING_LOSS = "loss"

ACCELERATORS = ("cuda", "mps")
ACCELERATOR_BATCH_FACTOR = 4  # a GPU takes bigger batches than the CPU default


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        epochs: Most passes over the data.
        batch_size: Samples per optimisation step.
        learning_rate: AdamW learning rate (cosine-decayed to 5% over ``epochs``).
        weight_decay: AdamW weight decay.
        seed: Seed of the shuffling and of torch's random numbers inside the loop.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        patience: Stop once the monitored value has not improved for this many epochs; 0 never stops
            early.
        monitor: The value early stopping watches: ``loss`` (the epoch's mean training loss) or the name
            of a metric returned by ``validate``.
        higher_is_better: Whether a larger monitored value is an improvement.

    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    patience: int = 0
    monitor: str = TRAINING_LOSS
    higher_is_better: bool = False


@dataclass
class TrainHistory:
    """What happened during training: mean loss and optional validation metrics per epoch."""

    loss: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


LossFn = Callable[[Any, Any, int], Any]
ValidateFn = Callable[[Any], dict[str, float]]
EpochHook = Callable[[int, Any, TrainHistory], bool | None]


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


@contextmanager
def seeded(seed: int, device=None) -> Iterator[None]:
    """Seed torch's global random generator (CPU, and ``device``'s) inside the block only.

    Args:
        seed: The seed.
        device: An accelerator ``torch.device`` whose generator is seeded too; None or CPU seeds the CPU
            generator alone.

    On leaving the block the generators are back in the caller's state.
    """
    import torch

    device = torch.device(device or "cpu")
    accelerators = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=accelerators, device_type=device.type):
        torch.default_generator.manual_seed(seed)
        if accelerators:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


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
    on_epoch_end: EpochHook | None = None,
    collate_fn: Callable | None = None,
    parameters=None,
) -> TrainHistory:
    """Train ``model`` in place with AdamW and one cosine learning-rate schedule over ``config.epochs``.

    Args:
        model: A ``torch.nn.Module``.
        dataset: A torch Dataset or a tuple of tensors of equal length.
        loss_fn: ``loss_fn(model, batch, epoch)`` returning a scalar loss tensor; the batch is already on
            the model's device.
        config: Training settings; defaults to :class:`TrainConfig`.
        progress: Called as ``progress(step, total_steps, message)``.
        should_stop: Returns True to cancel; checked before every step (raises ``Cancelled``).
        validate: Called with the model (in eval mode) after every epoch; its metrics go to the history.
        on_epoch_end: Called as ``on_epoch_end(epoch, model, history)`` after every epoch (after
            ``validate``); returning True ends training there.
        collate_fn: Batch collation for datasets of variable-size items.
        parameters: Parameters to optimise; defaults to all trainable parameters of ``model``.

    Returns:
        The training history, one entry per epoch run. The model is left in eval mode on the chosen
        device.

    Raises:
        ValueError: Early stopping watches a validation metric but no ``validate`` is given.

    """
    import torch

    config = config or TrainConfig()
    if config.patience and config.monitor != TRAINING_LOSS and validate is None:
        raise ValueError(f"Early stopping on {config.monitor!r} needs a validate function.")
    device = select_device(config.device)
    model.to(device)
    loader = make_loader(dataset, config.batch_size, True, config.seed, collate_fn)
    trainable = [p for p in (parameters or model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = max(1, config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=config.learning_rate * 0.05
    )
    history = TrainHistory()
    started = time.perf_counter()
    with seeded(config.seed, device):
        for epoch in range(config.epochs):
            model.train()
            losses = []
            for batch in loader:
                check_cancel(should_stop)
                loss = loss_fn(model, move_to(batch, device), epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                if progress is not None:
                    step = epoch * len(loader) + len(losses)
                    progress(step, total_steps, f"epoch {epoch + 1}/{config.epochs}")
            history.loss.append(sum(losses) / max(len(losses), 1))
            if _end_epoch(epoch, model, history, config, validate, on_epoch_end):
                break
    model.eval()
    history.seconds = time.perf_counter() - started
    return history


def _end_epoch(
    epoch: int,
    model,
    history: TrainHistory,
    config: TrainConfig,
    validate: ValidateFn | None,
    on_epoch_end: EpochHook | None,
) -> bool:
    """Validate, call the hook and check early stopping; True when training should end."""
    import torch

    if validate is not None:
        model.eval()
        with torch.no_grad():
            history.validation.append(validate(model))
    if on_epoch_end is not None and on_epoch_end(epoch, model, history):
        return True
    return bool(config.patience) and _epochs_without_improvement(history, config) >= config.patience


def _epochs_without_improvement(history: TrainHistory, config: TrainConfig) -> int:
    """Epochs since the monitored value last improved on its best so far."""
    if config.monitor == TRAINING_LOSS:
        values = np.asarray(history.loss)
    else:
        values = np.asarray([metrics[config.monitor] for metrics in history.validation])
    best = int(np.argmax(values) if config.higher_is_better else np.argmin(values))
    return len(values) - 1 - best


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
        batch_size: Samples per forward pass on the CPU; on CUDA or MPS :data:`ACCELERATOR_BATCH_FACTOR`
            times as many, with the inputs in page-locked memory (CUDA) and the outputs kept on the
            device until the end.
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
    accelerated = device.type in ACCELERATORS
    if accelerated:
        batch_size *= ACCELERATOR_BATCH_FACTOR
        if device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()  # page-locked: copies overlap with the work on the GPU
    model.eval()
    outputs = []
    total = len(tensor)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            check_cancel(should_stop)
            batch = tensor[start : start + batch_size].to(device, non_blocking=accelerated)
            output = forward(model, batch).float()
            outputs.append(output if accelerated else output.cpu())  # one copy back at the end
            if progress is not None:
                progress(min(start + batch_size, total), total, "predicting")
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()
