"""Pretext losses for pretraining the gene encoder without labels.

Each ``*_loss(model, batch, epoch)`` has the signature the shared training loop expects; ``batch`` is a
dense (cells, genes) tensor of preprocessed rows and ``model`` an ``ExpressionNetwork``.

- ``ae``: reconstruct the input from the latent (fully connected autoencoder).
- ``vime``: corrupt a random subset of genes; reconstruct the original values and predict which genes were
  corrupted (Yoon et al. 2020).
- ``scarf``: contrast a cell with a corrupted copy of itself against the other cells of the batch
  (InfoNCE; Bahri et al. 2022).
- ``byol``: make an online network predict the EMA target network's projection of another corrupted view
  (Grill et al. 2020).

Corruption replaces each selected gene value by the value of the same gene in a random other cell of the
batch (sampling from the empirical marginal), as SCARF and VIME do.
"""

from __future__ import annotations

from collections.abc import Callable

from napari_hematology.core.losses import info_nce

CORRUPTION_RATE = {"vime": 0.3, "scarf": 0.6, "byol": 0.4}
TEMPERATURE = 0.5
BYOL_MOMENTUM = 0.99


def corrupt(batch, rate: float):
    """Replace a random ``rate`` of the entries by the same gene's value in another random cell.

    Returns:
        ``(corrupted, mask)`` with ``mask`` 1.0 where an entry was replaced.
    """
    import torch

    n_cells, n_genes = batch.shape
    mask = (torch.rand_like(batch) < rate).float()
    donors = torch.randint(0, n_cells, (n_cells, n_genes), device=batch.device)
    shuffled = torch.gather(batch, 0, donors)
    return batch * (1 - mask) + shuffled * mask, mask


def autoencoder_loss(model, batch, epoch: int):
    """Mean squared reconstruction error."""
    import torch.nn.functional as F

    return F.mse_loss(model.pretext["decoder"](model.embed(batch)), batch)


def vime_loss(model, batch, epoch: int):
    """VIME: reconstruct the clean values and estimate the corruption mask from the corrupted input."""
    import torch.nn.functional as F

    corrupted, mask = corrupt(batch, CORRUPTION_RATE["vime"])
    latent = model.embed(corrupted)
    reconstruction = F.mse_loss(model.pretext["decoder"](latent), batch)
    mask_loss = F.binary_cross_entropy_with_logits(model.pretext["mask"](latent), mask)
    return reconstruction + mask_loss


def scarf_loss(model, batch, epoch: int):
    """SCARF: InfoNCE between each cell and its randomly corrupted copy."""
    corrupted, _ = corrupt(batch, CORRUPTION_RATE["scarf"])
    project = model.pretext["projector"]
    return info_nce(project(model.embed(batch)), project(model.embed(corrupted)), TEMPERATURE)


def byol_loss(model, batch, epoch: int):
    """BYOL: predict the target network's projection of the other view (symmetrised cosine loss)."""
    import torch
    import torch.nn.functional as F

    update_target(model, BYOL_MOMENTUM)
    views = [corrupt(batch, CORRUPTION_RATE["byol"])[0] for _ in range(2)]
    with torch.no_grad():
        targets = [F.normalize(model.target(view), dim=1) for view in views]
    predict = model.pretext["predictor"]
    project = model.pretext["projector"]
    predictions = [F.normalize(predict(project(model.embed(view))), dim=1) for view in views]
    similarity = (predictions[0] * targets[1]).sum(1) + (predictions[1] * targets[0]).sum(1)
    return (4 - 2 * similarity).mean() / 2


def update_target(model, momentum: float) -> None:
    """Move the BYOL target network towards the online encoder + projector (exponential average)."""
    import torch

    online = list(model.encoder.parameters()) + list(model.pretext["projector"].parameters())
    with torch.no_grad():
        for target, source in zip(model.target.parameters(), online, strict=True):
            target.mul_(momentum).add_(source.detach(), alpha=1 - momentum)


PRETEXT_LOSSES: dict[str, Callable] = {
    "ae": autoencoder_loss,
    "vime": vime_loss,
    "scarf": scarf_loss,
    "byol": byol_loss,
}
