"""Fitting IDEC or VaDE to per-cell signal vectors, optionally matching per-sample reference proportions.

Training follows the published recipes, through the shared :func:`~napari_hematology.core.training.train`
loop: an autoencoder is pretrained on reconstruction, the prototypes of the cluster model are placed on a
consensus over-clustering of the events (k-means cells grouped by the vote of several over-clusterings),
then everything is fine-tuned with the method's clustering objective. With reference fractions (one row
per sample, one column per cluster) the prototypes are regrouped to follow them and a
learning-from-label-proportions term pulls each sample's mean soft assignment towards its reference, so
the clusters become the named populations and every cell gets a soft label.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.training import TrainConfig, predict, seed_everything, train

METHODS = ("idec", "vade")
MIN_EVENTS_PER_CLUSTER = 5
MAX_PROTOTYPES = 100
CONSENSUS_EVENTS = 5000
MAX_REGROUP_PASSES = 20
EPSILON = 1e-8


@dataclass
class ClusterConfig:
    """How to fit one deep clustering model.

    Attributes:
        method: ``idec`` or ``vade``.
        clusters: Number of clusters (populations).
        prototypes_per_cluster: Latent prototypes per cluster (at most 100 in all), merged into clusters
            by consensus; 1 gives the original single-centre methods.
        init_restarts: Over-clusterings that vote on the initial clusters (consensus); 1 uses one.
        min_cluster_fraction: Groups of events smaller than this share of all events (doublets, debris,
            stray events) join their nearest cluster at initialisation instead of taking one of the
            ``clusters``; 0 keeps every group.
        latent_dim: Width of the latent space.
        hidden: Encoder hidden widths.
        pretrain_epochs: Autoencoder pretraining epochs; small data sets get more, so that pretraining
            makes at least ``min_pretrain_steps`` optimisation steps.
        min_pretrain_steps: Fewest pretraining steps (the latent space must be good before clustering).
        epochs: Most clustering fine-tuning epochs.
        stable_fraction: Fine-tuning stops once fewer than this fraction of the events change cluster
            in an epoch (DEC/IDEC's tolerance).
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
    init_restarts: int = 20
    min_cluster_fraction: float = 0.01
    latent_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    pretrain_epochs: int = 15
    min_pretrain_steps: int = 600
    epochs: int = 15
    stable_fraction: float = 0.001
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
        if self.init_restarts < 1:
            raise InputError(f"init_restarts must be at least 1, got {self.init_restarts}.")
        if not 0 <= self.min_cluster_fraction < 1 / self.clusters:
            raise InputError(
                f"min_cluster_fraction must be between 0 and 1/clusters ({1 / self.clusters:.3g}), got "
                f"{self.min_cluster_fraction}."
            )
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
    cells = _initialise_clusters(model, x, config)
    batch_reference = None
    if reference is not None:
        ids = np.asarray(sample_ids)[keep]
        _membership_from_reference(model, cells, ids, reference)
        batch_reference = torch.as_tensor(np.nan_to_num(reference, nan=-1.0), dtype=torch.float32)
        dataset = (x, torch.arange(len(x)), torch.as_tensor(ids, dtype=torch.long))
    else:
        dataset = (x, torch.arange(len(x)))
    initial_clusters = model.membership.numpy()[cells]
    loss = _clustering_loss(model, x, config, batch_reference, initial_clusters)
    _fine_tune(model, x, dataset, loss, config, steps.phase(1, "clustering"), should_stop, initial_clusters)
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


def _fine_tune(model, x, dataset, loss, config, progress, should_stop, labels: np.ndarray) -> None:
    """Clustering epochs until the partition has settled.

    DEC's and IDEC's convergence rule (fewer than ``stable_fraction`` of the events change cluster in an
    epoch), and also stop once more events change than in the epoch before: the partition then no longer
    settles but drifts, as the reconstruction term reshapes the latent space and erodes small clusters.
    """
    batches = -(-len(x) // config.batch_size)
    previous = 1.0
    for epoch in range(config.epochs):
        train(
            model,
            dataset,
            lambda net, batch, _epoch, epoch=epoch: loss(net, batch, epoch),
            dataclasses.replace(_train_config(config, 1), seed=config.seed + epoch),
            progress=_shifted(progress, epoch * batches, config.epochs * batches),
            should_stop=should_stop,
        )
        updated = predict(model, x, batch_size=8192).argmax(axis=1)
        changed = float(np.mean(updated != labels))
        labels = updated
        if changed < config.stable_fraction or changed > previous:
            break
        previous = changed


def _shifted(progress: ProgressCallback | None, offset: int, total: int) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda done, _total, text="": progress(offset + done, total, text)


def _reconstruction_loss(model, batch, epoch):
    x = batch[0]
    return (model.reconstruct(model.embed(x)) - x).pow(2).mean()


def _initialise_clusters(model, x, config: ClusterConfig) -> np.ndarray:
    """Place the prototypes on a consensus over-clustering of the events; return each event's prototype.

    The events are over-clustered with k-means (one cell per prototype) and the cells are grouped into
    clusters by consensus (:func:`_consensus_membership`). Each prototype then starts at the mean latent
    code of its cell.
    """
    import torch
    from sklearn.cluster import KMeans

    prototypes = len(model.membership)
    values = x.numpy()
    kmeans = KMeans(prototypes, n_init=1, random_state=config.seed).fit(values)
    cells = kmeans.labels_
    membership = _consensus_membership(values, cells, kmeans, config)
    model.membership.copy_(torch.as_tensor(membership, dtype=torch.long))
    latent = predict(model, x, batch_size=8192, forward=lambda net, b: net.embed(b))
    counts = np.bincount(cells, minlength=prototypes)
    centers = np.stack([latent[cells == k].mean(axis=0) for k in range(prototypes)])
    if config.method == "idec":
        model.centers.data = _as_tensor(centers)
        return cells
    # Start every component with the pooled within-cell variance: the initial responsibilities then
    # follow the k-means cells instead of being captured by the widest component.
    pooled_variance = ((latent - centers[cells]) ** 2).mean(axis=0) + 1e-6
    model.prior_logits.data = _as_tensor(np.log(counts / counts.sum()))
    model.prior_means.data = _as_tensor(centers)
    model.prior_logvars.data = _as_tensor(np.tile(np.log(pooled_variance), (prototypes, 1)))
    return cells


def _consensus_membership(values: np.ndarray, cells: np.ndarray, kmeans, config: ClusterConfig) -> np.ndarray:
    """Group the k-means cells into clusters by consensus over several over-clusterings.

    One over-clustering (k-means cells merged by complete linkage of their centres, the FlowSOM recipe)
    depends much on the k-means seed, most for small populations. ``init_restarts`` of them (the given
    one plus k-means restarts fitted on a subsample) vote on how often the events of two cells end up
    together; the cells are then grouped by average linkage of that co-association, as FlowSOM's
    consensus metaclustering does. Both linkages are cut so that every cluster holds at least
    ``min_cluster_fraction`` of the events (:func:`_cut_with_min_size`).
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist, squareform
    from sklearn.cluster import KMeans

    prototypes, clusters = kmeans.n_clusters, config.clusters
    rng = np.random.default_rng(config.seed)
    together = np.zeros((prototypes, prototypes))
    for restart in range(config.init_restarts):
        if restart:
            subset = rng.choice(len(values), min(len(values), CONSENSUS_EVENTS), replace=False)
            kmeans = KMeans(prototypes, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(
                values[subset]
            )
        assigned = kmeans.predict(values)
        distances = pdist(kmeans.cluster_centers_)
        merged = _cut_with_min_size(
            linkage(distances, method="complete"),
            squareform(distances),
            np.bincount(assigned, minlength=prototypes),
            clusters,
            config.min_cluster_fraction,
        )
        shares = np.zeros((prototypes, clusters))
        np.add.at(shares, (cells, merged[assigned]), 1.0)
        shares /= np.maximum(shares.sum(axis=1, keepdims=True), 1.0)
        together += shares @ shares.T
    distance = 1.0 - together / config.init_restarts
    np.fill_diagonal(distance, 0.0)
    return _cut_with_min_size(
        linkage(squareform(distance, checks=False), method="average"),
        distance,
        np.bincount(cells, minlength=prototypes),
        clusters,
        config.min_cluster_fraction,
    )


def _cut_with_min_size(
    tree: np.ndarray, distance: np.ndarray, sizes: np.ndarray, clusters: int, min_fraction: float
) -> np.ndarray:
    """Cut a linkage tree of cells into ``clusters`` groups that each hold ``min_fraction`` of the events.

    Cutting into exactly ``clusters`` groups spends clusters on small far-off groups (doublets, debris)
    and merges real populations instead. The tree is cut ever finer until ``clusters`` groups are big
    enough; the smaller groups then join the big group they are closest to (mean distance).

    Args:
        tree: Scipy linkage matrix over the cells.
        distance: (cells, cells) distances the tree was built from.
        sizes: Events per cell.
        clusters: Number of groups wanted.
        min_fraction: Smallest share of the events a group may hold.

    Returns:
        The group (0..clusters-1) of every cell.

    """
    from scipy.cluster.hierarchy import fcluster

    minimum = min_fraction * sizes.sum()
    for count in range(clusters, len(sizes) + 1):
        groups = fcluster(tree, count, criterion="maxclust") - 1
        group_sizes = np.bincount(groups, weights=sizes)
        big = np.flatnonzero(group_sizes >= minimum)
        if len(big) >= clusters:
            break
    else:
        groups = fcluster(tree, clusters, criterion="maxclust") - 1
        group_sizes = np.bincount(groups, weights=sizes)
        big = np.arange(len(group_sizes))
    big = big[np.argsort(-group_sizes[big], kind="stable")][:clusters]
    mean_distance = np.stack([distance[:, groups == group].mean(axis=1) for group in big], axis=1)
    membership = mean_distance.argmin(axis=1)
    for index, group in enumerate(big):
        membership[groups == group] = index
    return membership


def _number_by_size(model, x) -> None:
    """Renumber clusters by size, largest first, so that unsupervised runs name clusters repeatably."""
    import torch

    sizes = np.bincount(predict(model, x, batch_size=8192).argmax(axis=1), minlength=model.clusters)
    new_index = np.empty(model.clusters, dtype=np.int64)
    new_index[np.argsort(-sizes, kind="stable")] = np.arange(model.clusters)
    model.membership.copy_(torch.as_tensor(new_index)[model.membership])


def _membership_from_reference(
    model, cells: np.ndarray, sample_ids: np.ndarray, reference: np.ndarray
) -> None:
    """Regroup the prototypes so that each sample's share of events per cluster follows its reference.

    The unsupervised clusters are first matched one-to-one to the populations (Hungarian, on how well
    each cluster's per-sample shares follow each population's fractions). Then single prototypes move
    to another population while that lowers the squared error between the samples' shares and their
    reference fractions: a cell of the over-clustering made of one population's events holds, in every
    sample, a share proportional to that population's fraction, so the reference tells apart
    populations that the unsupervised grouping merged. Every population keeps at least one prototype.
    """
    import torch
    from scipy.optimize import linear_sum_assignment

    known = [s for s in np.unique(sample_ids) if np.isfinite(reference[s]).all()]
    if not known:
        return
    prototypes, populations = len(model.membership), reference.shape[1]
    shares = np.stack(
        [np.bincount(cells[sample_ids == s], minlength=prototypes) / np.sum(sample_ids == s) for s in known]
    )
    target = reference[known]
    membership = model.membership.numpy().copy()
    observed = shares @ np.eye(populations)[membership]
    _, matched = linear_sum_assignment(np.abs(observed[:, :, None] - target[:, None, :]).sum(axis=0))
    membership = matched[membership]
    residual = shares @ np.eye(populations)[membership] - target
    for _ in range(MAX_REGROUP_PASSES):
        moved = False
        for prototype in np.argsort(-shares.sum(axis=0)):
            current = membership[prototype]
            if np.sum(membership == current) == 1:
                continue
            column = shares[:, prototype : prototype + 1]
            # Change of the squared error when the prototype leaves `current` for each population.
            change = ((residual + column) ** 2 - residual**2).sum(axis=0)
            change += ((residual[:, current] - column[:, 0]) ** 2 - residual[:, current] ** 2).sum()
            change[current] = 0.0
            best = int(change.argmin())
            if change[best] < -EPSILON:
                residual[:, current] -= column[:, 0]
                residual[:, best] += column[:, 0]
                membership[prototype] = best
                moved = True
        if not moved:
            break
    model.membership.copy_(torch.as_tensor(membership, dtype=torch.long))


def _clustering_loss(model, x, config: ClusterConfig, reference, initial_clusters: np.ndarray):
    if config.method == "idec":
        base = _idec_loss(x, config.cluster_weight, initial_clusters)
    else:
        base = _vade_loss(config.recon_variance)
    if reference is None:
        return base

    def loss_fn(net, batch, epoch):
        return base(net, batch, epoch) + config.proportion_weight * _proportion_loss(net, batch, reference)

    return loss_fn


def _idec_loss(x, cluster_weight: float, initial_clusters: np.ndarray):
    """Reconstruction plus KL(P || Q) to the sharpened target P, refreshed once per epoch.

    The first epoch's target is the initial partition itself: the prototypes sit at latent means of
    cells found in the input space, and nearest-prototype assignment in the latent space may disagree
    with those cells; starting the self-training from Q instead would lock that disagreement in.
    """
    state = {"epoch": -1, "target": None}

    def loss_fn(model, batch, epoch):
        if epoch != state["epoch"]:
            if epoch == 0:
                target = np.eye(model.clusters)[initial_clusters]
            else:
                q = predict(model, x, batch_size=8192)
                weight = q**2 / q.sum(axis=0)
                target = weight / weight.sum(axis=1, keepdims=True)
            state["target"] = _as_tensor(target)
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
