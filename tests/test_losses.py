"""Noise-robust losses for the shared training loop."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hematology.core.errors import InputError
from napari_hematology.core.losses import LOSSES, kept_fraction, make_loss


def _blobs(n_per_class: int = 60, flip: float = 0.0, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    labels = np.repeat(np.arange(3), n_per_class)
    points = centres[labels] + rng.normal(scale=0.7, size=(len(labels), 2))
    noisy = labels.copy()
    flipped = rng.random(len(labels)) < flip
    noisy[flipped] = (labels[flipped] + 1) % 3
    return torch.tensor(points, dtype=torch.float32), torch.tensor(noisy), torch.tensor(labels)


def _train(loss_name: str, inputs, targets, **params):
    from napari_hematology.core.registry import create_model
    from napari_hematology.core.training import TrainConfig, train

    name = "coteaching_pair" if loss_name == "coteaching" else "mlp"
    config = dict(in_features=2, out_features=3, hidden=[16])
    model = (
        create_model(name, member="mlp", member_config=config)
        if name != "mlp"
        else create_model(name, **config)
    )
    history = train(
        model,
        (inputs, targets),
        make_loss(loss_name, **params),
        TrainConfig(epochs=15, batch_size=32, learning_rate=1e-2, device="cpu"),
    )
    return model, history


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_learns_clean_blobs(name):
    import torch

    inputs, targets, truth = _blobs()
    model, history = _train(name, inputs, targets)
    accuracy = float((model(inputs).argmax(1) == truth).float().mean())
    assert accuracy > 0.9
    assert all(np.isfinite(history.loss))
    assert torch.is_tensor(make_loss(name)(model, (inputs, targets), 0))


@pytest.mark.parametrize("name", ["gce", "small_loss"])
def test_robust_losses_hold_up_under_noise(name):
    inputs, targets, truth = _blobs(flip=0.3, seed=1)
    model, _ = _train(name, inputs, targets)
    assert float((model(inputs).argmax(1) == truth).float().mean()) > 0.85


def test_small_loss_ignores_the_largest_losses():
    import torch

    inputs, targets, _ = _blobs(n_per_class=10)
    model, _ = _train("ce", inputs, targets)
    wrong = (targets + 1) % 3
    batch = (inputs, torch.cat([targets[:25], wrong[25:]]))
    selected = make_loss("small_loss", forget_rate=0.15, warmup_epochs=1)(model, batch, epoch=5)
    plain = make_loss("ce")(model, batch, epoch=5)
    assert float(selected) < float(plain)


def test_kept_fraction_ramps_up_to_the_forget_rate():
    assert kept_fraction(0, 0.2, 4) == 1.0
    assert kept_fraction(2, 0.2, 4) == pytest.approx(0.9)
    assert kept_fraction(10, 0.2, 4) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("name", "params"),
    [("focal", {}), ("gce", {"q": 0.0}), ("small_loss", {"forget_rate": 1.5}), ("sce", {"gamma": 1.0})],
)
def test_bad_loss_choices_are_refused(name, params):
    with pytest.raises(InputError):
        make_loss(name, **params)


def test_coteaching_needs_a_pair():
    from napari_hematology.core.registry import create_model

    inputs, targets, _ = _blobs(n_per_class=4)
    model = create_model("mlp", in_features=2, out_features=3)
    with pytest.raises(InputError, match="coteaching_pair"):
        make_loss("coteaching")(model, (inputs, targets), 0)
