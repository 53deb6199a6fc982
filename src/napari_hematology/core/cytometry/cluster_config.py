"""Settings of one deep clustering model (IDEC or VaDE), and their flat form in stage configs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from napari_hematology.core.errors import InputError
from napari_hematology.core.training import TrainConfig

METHODS = ("idec", "vade")


def default_cluster_training() -> TrainConfig:
    """Training-loop settings of the clustering phase (pretraining uses them with its own epochs)."""
    return TrainConfig(epochs=15, batch_size=512, learning_rate=4e-3, weight_decay=0.0)


@dataclass
class ClusterConfig:
    """How to fit one deep clustering model.

    Attributes:
        method: ``idec`` or ``vade``.
        clusters: Number of clusters (populations); None chooses it from the data
            (:func:`~napari_hematology.core.cytometry.initialisation.choose_cluster_count`).
        prototypes_per_cluster: Latent prototypes per cluster (at most 100 in all), merged into clusters
            by consensus; 1 gives the original single-centre methods. With the count chosen from the data
            the 100 cells of the over-clustering that chose it are the prototypes.
        init_restarts: Over-clusterings that vote on the initial clusters (consensus); 1 uses one.
        min_cluster_fraction: Groups of events smaller than this share of all events (doublets, debris,
            stray events) join their nearest cluster at initialisation instead of taking one of the
            ``clusters``; 0 keeps every group.
        latent_dim: Width of the latent space.
        hidden: Encoder hidden widths.
        pretrain_epochs: Autoencoder pretraining epochs; small data sets get more, so that pretraining
            makes at least ``min_pretrain_steps`` optimisation steps.
        min_pretrain_steps: Fewest pretraining steps (the latent space must be good before clustering).
        stable_fraction: Fine-tuning stops once fewer than this fraction of the events change cluster
            in an epoch (DEC/IDEC's tolerance).
        cluster_weight: IDEC: weight of the clustering (KL) loss against reconstruction.
        recon_variance: VaDE: variance of the Gaussian decoder (smaller trusts reconstruction more).
        proportion_weight: Weight of the reference-proportion loss (soft labels).
        max_train_events: Events used for training (a random subset of the pooled events); every event
            is assigned afterwards. 5,000 events, batches of 512 at a learning rate of 0.004 (256 at
            0.002 before: the same epochs in half the steps, the same F1), 150 pretraining steps at
            least and 10 restarts on 2,000 events cluster a 20,000-event file in about 1.1-1.3 times
            FlowSOM's time, at the accuracy of training on all events (chosen on FlowSOM's ff.fcs;
            ``benchmarks/bench_cytometry.py``).
        max_clusters: With ``clusters=None``, the most clusters considered.
        count_tolerance: With ``clusters=None``, the smallest count whose ICL per event is within this
            of the best is chosen (0.2: of 0.02-0.2, the count varied least over 5 seeds on FlowSOM's ff.fcs
            and the unlabelled shared panels).
        train: Settings of the shared training loop: ``epochs`` is the most clustering (fine-tuning)
            epochs, ``seed`` seeds the subset, the initial weights and the initialisation too.

    """

    method: str = "idec"
    clusters: int | None = None
    prototypes_per_cluster: int = 10
    init_restarts: int = 10
    min_cluster_fraction: float = 0.01
    latent_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    pretrain_epochs: int = 15
    min_pretrain_steps: int = 150
    stable_fraction: float = 0.001
    cluster_weight: float = 0.1
    recon_variance: float = 0.1
    proportion_weight: float = 1.0
    max_train_events: int = 5000
    max_clusters: int = 15
    count_tolerance: float = 0.2
    train: TrainConfig = field(default_factory=default_cluster_training)

    @classmethod
    def setting_names(cls) -> set[str]:
        """Every name :meth:`from_settings` accepts: the fields here and those of :class:`TrainConfig`."""
        return {f.name for f in fields(cls) if f.name != "train"} | {f.name for f in fields(TrainConfig)}

    @classmethod
    def from_settings(cls, **settings: Any) -> ClusterConfig:
        """Build from flat settings, as stage configs hold them (``epochs: 20``, ``latent_dim: 4``).

        Names of :class:`TrainConfig` fields (epochs, batch_size, learning_rate, seed, ...) change
        ``train``; the others are fields of this class.
        """
        training = {f.name for f in fields(TrainConfig)}
        own = {name: value for name, value in settings.items() if name not in training}
        train = replace(default_cluster_training(), **{k: v for k, v in settings.items() if k in training})
        return cls(**own, train=train)

    def check(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        if self.method not in METHODS:
            raise InputError(
                f"Unknown clustering method {self.method!r}; choose one of {', '.join(METHODS)}."
            )
        if self.clusters is not None and self.clusters < 2:
            raise InputError(f"At least 2 clusters are needed, got {self.clusters}.")
        if self.clusters is None and self.max_clusters < 2:
            raise InputError(f"max_clusters must be at least 2, got {self.max_clusters}.")
        if self.init_restarts < 1:
            raise InputError(f"init_restarts must be at least 1, got {self.init_restarts}.")
        most = self.clusters or 2
        if not 0 <= self.min_cluster_fraction < 1 / most:
            raise InputError(
                f"min_cluster_fraction must be between 0 and 1/clusters ({1 / most:.3g}), got "
                f"{self.min_cluster_fraction}."
            )
        if min(self.pretrain_epochs, self.train.epochs) < 0 or self.train.batch_size < 2:
            raise InputError("Epochs must be >= 0 and the batch size >= 2.")
