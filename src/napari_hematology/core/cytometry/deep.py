"""Fitting IDEC or VaDE to per-cell signal vectors, optionally matching per-sample reference proportions.

Training follows the published recipes, through the shared :func:`~napari_hematology.core.training.train`
loop: an autoencoder is pretrained on reconstruction, the cluster model is initialised in its latent space
(k-means for IDEC, a Gaussian mixture for VaDE), then everything is fine-tuned with the method's
clustering objective. With reference fractions (one row per sample, one column per cluster) a
learning-from-label-proportions term pulls each sample's mean soft assignment towards its reference, so the
clusters become the named populations and every cell gets a soft label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.training import TrainConfig, predict, seed_everything, train

METHODS = ("idec", "vade")
MIN_EVENTS_PER_CLUSTER = 5
MAX_PROTOTYPES = 100
EPSILON = 1e-8


@dataclass
class ClusterConfig:
    """How to fit one deep clustering model.

    Attributes:
        method: ``idec`` or ``vade``.
        clusters: Number of clusters (populations).
        prototypes_per_cluster: Latent prototypes per cluster (at most 100 in all), merged into clusters
            by average linkage; 1 gives the original single-centre methods.
        latent_dim: Width of the latent space.
        hidden: Encoder hidden widths.
        pretrain_epochs: Autoencoder pretraining epochs; small data sets get more, so that pretraining
            makes at least ``min_pretrain_steps`` optimisation steps.
        min_pretrain_steps: Fewest pretraining steps (the latent space must be good before clustering).
        epochs: Clustering fine-tuning epochs.
        batch_size: Events per optimisation step.
        learning_rate: AdamW learning rate.
        cluster_weight: IDEC: weight of the clustering (KL) loss against reconstruction.
        recon_variance: VaDE: variance of the Gaussian decoder (smaller trusts reconstruction more).
        proportion_weight: Weight of the reference-proportion loss (soft labels).
        max_train_events: Events used for training (a random subset of the pooled events).
        seed: Random seed.
        threads: Torch CPU threads; None keeps torch's default.

    """

    method: str = "idec"
    clusters: int = 5
    prototypes_per_cluster: int = 10
    latent_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    pretrain_epochs: int = 15
    min_pretrain_steps: int = 600
    epochs: int = 15
    batch_size: int = 256
    learning_rate: float = 2e-3
    cluster_weight: float = 0.1
    recon_variance: float = 0.1
    proportion_weight: float = 1.0
    max_train_events: int = 60000
    seed: int = 0
    threads: int | None = None

    def check(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        if self.method not in METHODS:
            raise InputError(
                f"Unknown clustering method {self.method!r}; choose one of {', '.join(METHODS)}."
            )
        if self.clusters < 2:
            raise InputError(f"At least 2 clusters are needed, got {self.clusters}.")
        if min(self.pretrain_epochs, self.epochs) < 0 or self.batch_size < 2:
            raise InputError("Epochs must be >= 0 and the batch size >= 2.")


@dataclass
class Clusterer:
    """A fitted model with the standardisation it expects.

    Attributes:
        model: The IDEC or VaDE module (eval mode).
        channels: Channel names, in column order.
        mean: Per-channel mean of the training events (after transform).
        std: Per-channel scale (one value shared by all channels: their pooled standard deviation).
        populations: Cluster names.
        extra: Other metadata saved with the model (transform, training time, ...).

    """

    model: object
    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    populations: list[str]
    extra: dict = field(default_factory=dict)

    def standardize(self, values: np.ndarray):
        """Float32 tensor of standardised values."""
        import torch

        return torch.as_tensor(((values - self.mean) / self.std).astype(np.float32))

    def assign(self, values: np.ndarray, *, should_stop: StopCallback | None = None) -> np.ndarray:
        """Soft cluster assignments ``(events, clusters)`` of transformed events."""
        return predict(self.model, self.standardize(values), batch_size=8192, should_stop=should_stop)

    def embed(self, values: np.ndarray) -> np.ndarray:
        """Latent coordinates ``(events, latent_dim)`` of transformed events."""
        return predict(
            self.model, self.standardize(values), batch_size=8192, forward=lambda net, x: net.embed(x)
        )

    def save(self, directory: str | Path) -> Path:
        """Save through the model registry (safetensors + config.json)."""
        from napari_hematology.core.registry import save_model

        metadata = {
            "channels": self.channels,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "populations": self.populations,
            **self.extra,
        }
        return save_model(self.model, directory, metadata)


def load_clusterer(directory: str | Path) -> Clusterer:
    """Load a model saved by :meth:`Clusterer.save`.

    Raises:
        ModelFileError: The folder is missing, corrupt or holds another kind of model.

    """
    from napari_hematology.core.errors import ModelFileError
    from napari_hematology.core.registry import load_model, read_model_config

    name = read_model_config(directory)["name"]
    if name not in METHODS:
        raise ModelFileError(f"{directory} holds a {name!r} model, not a cytometry clustering model.")
    model, metadata = load_model(directory, expected_name=name)
    known = {"channels", "mean", "std", "populations"}
    return Clusterer(
        model=model,
        channels=list(metadata["channels"]),
        mean=np.asarray(metadata["mean"]),
        std=np.asarray(metadata["std"]),
        populations=list(metadata["populations"]),
        extra={k: v for k, v in metadata.items() if k not in known},
    )


def fit_clusterer(
    values: np.ndarray,
    channels: list[str],
    config: ClusterConfig,
    *,
    sample_ids: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    populations: list[str] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Clusterer:
    """Fit IDEC or VaDE to transformed events.

    Args:
        values: Transformed events ``(events, channels)``.
        channels: Channel names (for messages and the saved model).
        config: Model and training settings.
        sample_ids: Sample index of every event (needed with ``reference``).
        reference: Reference fractions ``(samples, clusters)``; rows sum to 1, NaN rows are unknown.
        populations: Cluster names; default ``0..clusters-1``. Without a reference, clusters are numbered
            by size, largest first.
        progress: Called as ``progress(step, total, message)``.
        should_stop: Returns True to cancel.

    Returns:
        The fitted clusterer.

    Raises:
        InputError: Too few events, NaN or constant channels, inconsistent reference.

    """
    import time

    import torch

    config.check()
    started = time.perf_counter()
    mean, std = _check_values(values, channels, config.clusters)
    populations = list(populations or [str(k) for k in range(config.clusters)])
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.permutation(len(values))[: config.max_train_events])
    x = torch.as_tensor(((values[keep] - mean) / std).astype(np.float32))
    seed_everything(config.seed)
    from napari_hematology.core.registry import create_model

    model = create_model(
        config.method,
        in_features=x.shape[1],
        clusters=config.clusters,
        prototypes=_prototype_count(config, len(x)),
        latent_dim=config.latent_dim,
        hidden=list(config.hidden),
    )
    batches = -(-len(x) // config.batch_size)
    pretrain_epochs = max(config.pretrain_epochs, -(-config.min_pretrain_steps // batches))
    steps = _Phases(progress, batches, [pretrain_epochs, config.epochs])
    train(
        model,
        (x,),
        _reconstruction_loss,
        _train_config(config, pretrain_epochs),
        progress=steps.phase(0, "pretraining"),
        should_stop=should_stop,
    )
    check_cancel(should_stop)
    _initialise_clusters(model, x, config)
    batch_reference = None
    if reference is not None:
        ids = np.asarray(sample_ids)[keep]
        _align_to_reference(model, x, ids, reference)
        batch_reference = torch.as_tensor(np.nan_to_num(reference, nan=-1.0), dtype=torch.float32)
        dataset = (x, torch.arange(len(x)), torch.as_tensor(ids, dtype=torch.long))
    else:
        dataset = (x, torch.arange(len(x)))
    loss = _clustering_loss(model, x, config, batch_reference)
    train(
        model,
        dataset,
        loss,
        _train_config(config, config.epochs),
        progress=steps.phase(1, "clustering"),
        should_stop=should_stop,
    )
    if reference is None:
        _number_by_size(model, x)
    extra = {
        "method": config.method,
        "train_seconds": time.perf_counter() - started,
        "cluster_config": asdict(config),
    }
    return Clusterer(model, list(channels), mean, std, populations, extra)


def _check_values(values: np.ndarray, channels: list[str], clusters: int) -> tuple[np.ndarray, np.ndarray]:
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise InputError(f"Expected events x {len(channels)} channels, got shape {values.shape}.")
    if len(values) < clusters * MIN_EVENTS_PER_CLUSTER:
        raise InputError(
            f"Only {len(values)} events to split into {clusters} clusters; use fewer clusters or more events."
        )
    bad = [c for c, ok in zip(channels, np.isfinite(values).all(axis=0), strict=False) if not ok]
    if bad:
        raise InputError(
            f"Channel(s) {', '.join(bad)} hold NaN or infinite values; drop them with --channels."
        )
    std = values.std(axis=0)
    constant = [c for c, s in zip(channels, std, strict=False) if s < 1e-9]
    if constant:
        raise InputError(
            f"Channel(s) {', '.join(constant)} are constant (every event has the same value) and carry no "
            "information; leave them out with --channels."
        )
    # One scale for all channels: transformed channels are already comparable, and z-scoring each one
    # would blow a noise-only channel up to the weight of the channels that separate populations.
    return values.mean(axis=0), np.full(len(channels), float(np.sqrt((std**2).mean())))


def _prototype_count(config: ClusterConfig, events: int) -> int:
    wanted = min(config.clusters * config.prototypes_per_cluster, MAX_PROTOTYPES)
    return max(config.clusters, min(wanted, events // MIN_EVENTS_PER_CLUSTER))


def _train_config(config: ClusterConfig, epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=0.0,
        seed=config.seed,
        device="cpu",
        threads=config.threads,
    )


class _Phases:
    """Maps the progress of the two training phases onto one bar."""

    def __init__(self, progress: ProgressCallback | None, batches: int, epochs: list[int]):
        self.progress = progress
        self.sizes = [count * batches for count in epochs]

    def phase(self, index: int, message: str) -> ProgressCallback | None:
        if self.progress is None:
            return None
        offset, total = sum(self.sizes[:index]), sum(self.sizes)
        return lambda done, _total, text="": self.progress(offset + done, total, f"{message} {text}")


def _reconstruction_loss(model, batch, epoch):
    x = batch[0]
    return (model.reconstruct(model.embed(x)) - x).pow(2).mean()


def _initialise_clusters(model, x, config: ClusterConfig) -> None:
    """Over-cluster the events with k-means, merge the pieces into clusters, and place the prototypes.

    Average-linkage merging of many small k-means cells (the FlowSOM recipe) finds populations of very
    different sizes that a k-means with one centre per cluster would split or merge. It runs on the
    standardised channels, where distances mean the same for every stage; each prototype then starts at
    the mean latent code of its cell.
    """
    import torch
    from sklearn.cluster import AgglomerativeClustering, KMeans

    prototypes = len(model.membership)
    kmeans = KMeans(prototypes, n_init=3, random_state=config.seed).fit(x.numpy())
    membership = AgglomerativeClustering(config.clusters, linkage="average").fit_predict(
        kmeans.cluster_centers_
    )
    model.membership.copy_(torch.as_tensor(membership, dtype=torch.long))
    latent = predict(model, x, batch_size=8192, forward=lambda net, b: net.embed(b))
    cells = kmeans.labels_
    counts = np.bincount(cells, minlength=prototypes)
    centers = np.stack([latent[cells == k].mean(axis=0) for k in range(prototypes)])
    if config.method == "idec":
        model.centers.data = _as_tensor(centers)
        return
    # Start every component with the pooled within-cell variance: the initial responsibilities then
    # follow the k-means cells instead of being captured by the widest component.
    pooled_variance = ((latent - centers[cells]) ** 2).mean(axis=0) + 1e-6
    model.prior_logits.data = _as_tensor(np.log(counts / counts.sum()))
    model.prior_means.data = _as_tensor(centers)
    model.prior_logvars.data = _as_tensor(np.tile(np.log(pooled_variance), (prototypes, 1)))


def _number_by_size(model, x) -> None:
    """Renumber clusters by size, largest first, so that unsupervised runs name clusters repeatably."""
    import torch

    sizes = np.bincount(predict(model, x, batch_size=8192).argmax(axis=1), minlength=model.clusters)
    new_index = np.empty(model.clusters, dtype=np.int64)
    new_index[np.argsort(-sizes, kind="stable")] = np.arange(model.clusters)
    model.membership.copy_(torch.as_tensor(new_index)[model.membership])


def _align_to_reference(model, x, sample_ids: np.ndarray, reference: np.ndarray) -> None:
    """Renumber the initial clusters so that cluster k best follows population k across samples."""
    import torch
    from scipy.optimize import linear_sum_assignment

    q = predict(model, x, batch_size=8192)
    known = [s for s in np.unique(sample_ids) if np.isfinite(reference[s]).all()]
    if not known:
        return
    observed = np.stack([q[sample_ids == s].mean(axis=0) for s in known])
    cost = np.abs(observed[:, :, None] - reference[known][:, None, :]).sum(axis=0)
    clusters, populations = linear_sum_assignment(cost)
    new_index = np.empty(len(clusters), dtype=np.int64)
    new_index[clusters] = populations
    model.membership.copy_(torch.as_tensor(new_index)[model.membership])


def _clustering_loss(model, x, config: ClusterConfig, reference):
    if config.method == "idec":
        base = _idec_loss(x, config.cluster_weight)
    else:
        base = _vade_loss(config.recon_variance)
    if reference is None:
        return base

    def loss_fn(net, batch, epoch):
        return base(net, batch, epoch) + config.proportion_weight * _proportion_loss(net, batch, reference)

    return loss_fn


def _idec_loss(x, cluster_weight: float):
    """Reconstruction plus KL(P || Q) to the sharpened target P, refreshed once per epoch."""
    state = {"epoch": -1, "target": None}

    def loss_fn(model, batch, epoch):
        if epoch != state["epoch"]:
            q = predict(model, x, batch_size=8192)
            weight = q**2 / q.sum(axis=0)
            state["target"] = _as_tensor(weight / weight.sum(axis=1, keepdims=True))
            state["epoch"] = epoch
            model.train()
        inputs, index = batch[0], batch[1]
        z = model.embed(inputs)
        q = model.soft_assign(z)
        p = state["target"][index]
        kl = (p * (p.add(EPSILON).log() - q.add(EPSILON).log())).sum(dim=1).mean()
        return (model.reconstruct(z) - inputs).pow(2).mean() + cluster_weight * kl

    return loss_fn


def _as_tensor(array: np.ndarray):
    import torch

    return torch.as_tensor(array, dtype=torch.float32)


def _vade_loss(recon_variance: float):
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


def _proportion_loss(model, batch, reference):
    """Cross-entropy between each sample's reference fractions and its mean soft assignment in the batch."""
    import torch

    inputs, sample_ids = batch[0], batch[2]
    q = model(inputs)
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
