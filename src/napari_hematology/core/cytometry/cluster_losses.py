"""Training losses of IDEC and VaDE, and the reference-proportion term that turns clusters into soft labels.

Every loss has the shared loop's signature ``loss(model, batch, epoch)``; a batch holds the events, their
row numbers and, with reference fractions, their sample numbers.
"""

from __future__ import annotations

import numpy as np

from napari_hematology.core.cytometry.cluster_config import ClusterConfig
from napari_hematology.core.training import LossFn

EPSILON = 1e-8


class SelfTrainingTarget:
    """IDEC's target distribution P over all training events, one row per event.

    It starts as the initial partition itself: the prototypes sit at latent means of cells found in the
    input space, and nearest-prototype assignment in the latent space may disagree with those cells;
    starting the self-training from Q instead would lock that disagreement in. After every epoch it
    becomes the sharpened soft assignment Q (:meth:`refresh`).
    """

    def __init__(self, initial_clusters: np.ndarray, clusters: int):
        import torch

        self.value = torch.as_tensor(np.eye(clusters)[initial_clusters], dtype=torch.float32)

    def refresh(self, q: np.ndarray) -> None:
        """Sharpen the soft assignments ``q`` (events, clusters) of all training events into P."""
        import torch

        weight = q**2 / q.sum(axis=0)
        self.value = torch.as_tensor(weight / weight.sum(axis=1, keepdims=True), dtype=torch.float32)


def reconstruction_loss(model, batch, epoch):
    """Mean squared reconstruction error of the autoencoder (pretraining)."""
    x = batch[0]
    return (model.reconstruct(model.embed(x)) - x).pow(2).mean()


def clustering_loss(config: ClusterConfig, target: SelfTrainingTarget | None, reference) -> LossFn:
    """The fine-tuning loss of ``config.method``, plus the proportion term when there is a reference.

    Args:
        config: Gives the method and the weights of the terms.
        target: IDEC's self-training target (unused by VaDE).
        reference: Reference fractions ``(samples, clusters)`` as a tensor, -1 rows unknown; or None.

    Returns:
        ``loss(model, batch, epoch)``.

    """
    if config.method == "idec":
        base = idec_loss(target, config.cluster_weight)
    else:
        base = vade_loss(config.recon_variance)
    if reference is None:
        return base

    def loss_fn(net, batch, epoch):
        return base(net, batch, epoch) + config.proportion_weight * proportion_loss(net, batch, reference)

    return loss_fn


def idec_loss(target: SelfTrainingTarget, cluster_weight: float) -> LossFn:
    """Reconstruction plus ``cluster_weight`` times KL(P || Q) to the self-training target P."""

    def loss_fn(model, batch, epoch):
        inputs, index = batch[0], batch[1]
        z = model.embed(inputs)
        q = model.soft_assign(z)
        p = target.value[index.cpu()].to(q.device)
        kl = (p * (p.add(EPSILON).log() - q.add(EPSILON).log())).sum(dim=1).mean()
        return (model.reconstruct(z) - inputs).pow(2).mean() + cluster_weight * kl

    return loss_fn


def vade_loss(recon_variance: float) -> LossFn:
    """Negative evidence lower bound of VaDE, per event."""
    import torch

    def loss_fn(model, batch, epoch):
        inputs = batch[0]
        mean, logvar = model.encode(inputs)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        reconstruction = 0.5 * (model.reconstruct(z) - inputs).pow(2).sum(dim=1) / recon_variance
        log_joint = model.component_log_likelihood(z)
        gamma = torch.softmax(log_joint, dim=1).detach()
        prior_vars = model.prior_logvars.exp().unsqueeze(0)
        cross = 0.5 * (
            gamma.unsqueeze(2)
            * (
                model.prior_logvars.unsqueeze(0)
                + logvar.exp().unsqueeze(1) / prior_vars
                + (mean.unsqueeze(1) - model.prior_means.unsqueeze(0)).pow(2) / prior_vars
            )
        ).sum(dim=(1, 2))
        log_pi = torch.log_softmax(model.prior_logits, dim=0).unsqueeze(0)
        categorical = (gamma * (gamma.add(EPSILON).log() - log_pi)).sum(dim=1)
        entropy = 0.5 * (1 + logvar).sum(dim=1)
        return (reconstruction + cross + categorical - entropy).mean()

    return loss_fn


def proportion_loss(model, batch, reference):
    """Cross-entropy between each sample's reference fractions and its mean soft assignment in the batch."""
    import torch

    inputs, sample_ids = batch[0], batch[2]
    q = model(inputs)
    reference = reference.to(q.device)
    samples = reference.shape[0]
    one_hot = torch.nn.functional.one_hot(sample_ids, samples).float()
    counts = one_hot.sum(dim=0)
    present = (counts > 0) & (reference[:, 0] >= 0)
    if not bool(present.any()):
        return q.sum() * 0.0
    means = (one_hot.T @ q)[present] / counts[present].unsqueeze(1)
    target = reference[present]
    weights = counts[present] / counts[present].sum()
    return -(weights * (target * means.add(EPSILON).log()).sum(dim=1)).sum()
