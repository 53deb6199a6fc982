"""Deep clustering of per-cell signal vectors: IDEC and VaDE.

Both share a fully connected autoencoder (two :class:`~napari_hematology.models.mlp.MLP`) and differ in
the cluster model living in the latent space. Each cluster may own several prototypes (IDEC centres or
VaDE mixture components, listed in the ``membership`` buffer), so that clusters of very different sizes
and non-spherical shapes, common in cytometry, are modelled as unions of small spherical pieces (as
FlowSOM does with its metaclusters); with one prototype per cluster they are the original methods:

- ``idec`` (Guo et al. 2017): cluster centres with a Student's t soft assignment, trained with a
  self-training KL loss plus the reconstruction loss that keeps the latent space faithful.
- ``vade`` (Jiang et al. 2017): a variational autoencoder with a Gaussian-mixture prior; the soft
  assignment is the posterior responsibility of each mixture component.

``model(x)`` returns the soft cluster assignment ``(n, clusters)`` in both cases; ``model.embed(x)`` the
latent coordinates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_hematology.models._registry import register_model
from napari_hematology.models.mlp import MLP

DEFAULT_HIDDEN = (64, 32)


class PrototypeClustering(nn.Module):
    """An autoencoder whose latent prototypes are grouped into clusters by ``membership``.

    Subclasses give the latent cluster model through ``prototype_assign``.
    """

    def __init__(self, in_features: int, clusters: int, prototypes: int, latent_dim: int,
                 hidden: tuple[int, ...] | list[int], encoder_out: int) -> None:
        super().__init__()
        if prototypes < clusters:
            raise ValueError(f"Need at least one prototype per cluster ({prototypes} < {clusters}).")
        self.clusters = clusters
        hidden = tuple(hidden)
        self.net = nn.ModuleDict({
            "encoder": MLP(in_features, encoder_out, hidden, dropout=0.0),
            "decoder": MLP(latent_dim, in_features, tuple(reversed(hidden)), dropout=0.0),
        })
        self.register_buffer("membership", torch.arange(prototypes) % clusters)

    def prototype_assign(self, z: torch.Tensor) -> torch.Tensor:
        """Probability of each prototype for each latent point, ``(n, prototypes)``."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent coordinates of ``x``."""
        return self.net["encoder"](x)

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latent coordinates back to the input space."""
        return self.net["decoder"](z)

    def group(self, prototype_probabilities: torch.Tensor) -> torch.Tensor:
        """Sum prototype probabilities ``(n, prototypes)`` into cluster probabilities."""
        one_hot = nn.functional.one_hot(self.membership, self.clusters).to(prototype_probabilities)
        return prototype_probabilities @ one_hot

    def soft_assign(self, z: torch.Tensor) -> torch.Tensor:
        """Soft cluster assignment of latent points."""
        return self.group(self.prototype_assign(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Soft cluster assignment ``(n, clusters)``."""
        return self.soft_assign(self.embed(x))


class IDEC(PrototypeClustering):
    """Autoencoder plus cluster centres with a Student's t soft assignment."""

    def __init__(self, in_features: int, clusters: int, prototypes: int, latent_dim: int,
                 hidden: tuple[int, ...] | list[int], alpha: float) -> None:
        super().__init__(in_features, clusters, prototypes, latent_dim, hidden, latent_dim)
        self.centers = nn.Parameter(torch.zeros(prototypes, latent_dim))
        self.alpha = alpha

    def prototype_assign(self, z: torch.Tensor) -> torch.Tensor:
        """Student's t similarity of each latent point to each centre, normalised per row."""
        distance = torch.cdist(z, self.centers).pow(2)
        q = (1.0 + distance / self.alpha).pow(-(self.alpha + 1.0) / 2.0)
        return q / q.sum(dim=1, keepdim=True)

    def soft_assign(self, z: torch.Tensor) -> torch.Tensor:
        """Student's t assignment to each cluster's nearest centre.

        Summing the heavy-tailed kernel over all centres of a cluster would let a cluster with many
        centres outweigh the one nearby centre of a small population; each cluster is represented by
        its nearest centre instead, so the hard assignment is the nearest centre's cluster.
        """
        similarity = self.prototype_assign(z)
        nearest = similarity.new_zeros(len(z), self.clusters).scatter_reduce(
            1, self.membership.expand_as(similarity), similarity, reduce="amax", include_self=False
        )
        return nearest / nearest.sum(dim=1, keepdim=True)


class VaDE(PrototypeClustering):
    """Variational autoencoder with a learnable Gaussian-mixture prior (diagonal covariances)."""

    def __init__(self, in_features: int, clusters: int, prototypes: int, latent_dim: int,
                 hidden: tuple[int, ...] | list[int]) -> None:
        super().__init__(in_features, clusters, prototypes, latent_dim, hidden, 2 * latent_dim)
        self.prior_logits = nn.Parameter(torch.zeros(prototypes))
        self.prior_means = nn.Parameter(torch.zeros(prototypes, latent_dim))
        self.prior_logvars = nn.Parameter(torch.zeros(prototypes, latent_dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of the latent code."""
        mean, logvar = self.net["encoder"](x).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 8.0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent coordinates (posterior means) of ``x``."""
        return self.encode(x)[0]

    def component_log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(z | mu_k, sigma_k)`` for every row of ``z`` and component ``k``."""
        diff = z.unsqueeze(1) - self.prior_means.unsqueeze(0)
        logvars = self.prior_logvars.unsqueeze(0)
        log_normal = -0.5 * ((diff.pow(2) / logvars.exp()) + logvars + math.log(2 * math.pi)).sum(dim=2)
        return torch.log_softmax(self.prior_logits, dim=0) + log_normal

    def prototype_assign(self, z: torch.Tensor) -> torch.Tensor:
        """Posterior responsibility of each mixture component."""
        return torch.softmax(self.component_log_likelihood(z), dim=1)


@register_model("idec")
def build_idec(
    in_features: int,
    clusters: int,
    prototypes: int | None = None,
    latent_dim: int = 8,
    hidden: tuple[int, ...] | list[int] = DEFAULT_HIDDEN,
    alpha: float = 1.0,
) -> IDEC:
    """Build an IDEC model (Improved Deep Embedded Clustering).

    Args:
        in_features: Channels per cell.
        clusters: Number of clusters.
        prototypes: Number of centres (grouped into clusters); default one per cluster.
        latent_dim: Width of the latent space.
        hidden: Encoder hidden widths (the decoder mirrors them).
        alpha: Degrees of freedom of the Student's t kernel.

    Returns:
        The module; ``model(x)`` gives soft assignments, ``model.embed(x)`` latents.

    """
    return IDEC(in_features, clusters, prototypes or clusters, latent_dim, hidden, alpha)


@register_model("vade")
def build_vade(
    in_features: int,
    clusters: int,
    prototypes: int | None = None,
    latent_dim: int = 8,
    hidden: tuple[int, ...] | list[int] = DEFAULT_HIDDEN,
) -> VaDE:
    """Build a VaDE model (Variational Deep Embedding with a Gaussian-mixture prior).

    Args:
        in_features: Channels per cell.
        clusters: Number of clusters.
        prototypes: Number of mixture components (grouped into clusters); default one per cluster.
        latent_dim: Width of the latent space.
        hidden: Encoder hidden widths (the decoder mirrors them).

    Returns:
        The module; ``model(x)`` gives soft assignments, ``model.embed(x)`` latents.

    """
    return VaDE(in_features, clusters, prototypes or clusters, latent_dim, hidden)
