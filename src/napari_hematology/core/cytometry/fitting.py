"""Fitting IDEC or VaDE to per-cell signal vectors, optionally matching per-sample reference proportions.

Training follows the published recipes, through the shared :func:`~napari_hematology.core.training.train`
loop: an autoencoder is pretrained on reconstruction, the prototypes of the cluster model are placed on a
consensus over-clustering of the events (:mod:`~napari_hematology.core.cytometry.initialisation`), then
everything is fine-tuned with the method's clustering objective in one training run, whose epoch hook
refreshes the assignments and stops once the partition has settled. With reference fractions (one row
per sample, one column per cluster) the prototypes are regrouped to follow them and a
learning-from-label-proportions term pulls each sample's mean soft assignment towards its reference, so
the clusters become the named populations and every cell gets a soft label.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from napari_hematology.core.cytometry.cluster_config import ClusterConfig
from napari_hematology.core.cytometry.cluster_losses import (
    SelfTrainingTarget,
    clustering_loss,
    reconstruction_loss,
)
from napari_hematology.core.cytometry.clusterer import Clusterer
from napari_hematology.core.cytometry.initialisation import (
    choose_cluster_count,
    initialise_clusters,
    membership_from_reference,
    over_cluster,
)
from napari_hematology.core.errors import InputError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel
from napari_hematology.core.training import TrainHistory, predict, seeded, train

MIN_EVENTS_PER_CLUSTER = 5
MAX_PROTOTYPES = 100


@dataclass
class PanelAutoencoder:
    """An autoencoder pretrained once on the pooled events of a panel's samples, to warm-start each one.

    Attributes:
        method: The method it was built for (``idec`` or ``vade``: their encoders differ).
        channels: Channel names, in column order.
        mean: Per-channel mean of the pooled events (every sample is standardised with it).
        std: Per-channel scale of the pooled events.
        weights: The encoder's and decoder's state (``model.net.state_dict()``).

    """

    method: str
    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: dict


def pretrain_panel(
    values: np.ndarray,
    channels: list[str],
    config: ClusterConfig,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> PanelAutoencoder:
    """Pretrain the autoencoder once on the pooled events of several samples of one panel.

    :func:`fit_clusterer` given the result skips its own pretraining: per sample only the clusters are
    initialised and fine-tuned.

    Args:
        values: Transformed events of all the samples, pooled ``(events, channels)``.
        channels: Channel names.
        config: Model and training settings (``max_train_events`` events are drawn from the pool).
        progress: Called as ``progress(step, total, message)``.
        should_stop: Returns True to cancel.

    Returns:
        The pretrained autoencoder with the pool's standardisation.

    Raises:
        InputError: Too few events, NaN or constant channels.

    """
    from napari_hematology.core.registry import create_model

    config.check()
    mean, std = _check_values(values, channels, 2)
    x, _ = _training_events(values, mean, std, config)
    with seeded(config.train.seed):
        model = create_model(config.method, in_features=x.shape[1], clusters=1, prototypes=1,
                             latent_dim=config.latent_dim, hidden=list(config.hidden))
    _pretrain(model, x, config, progress, should_stop)
    weights = {key: value.clone() for key, value in model.net.state_dict().items()}
    return PanelAutoencoder(config.method, list(channels), mean, std, weights)


def _training_events(values: np.ndarray, mean: np.ndarray, std: np.ndarray, config: ClusterConfig):
    """Standardised training events (a tensor; at most ``max_train_events``, seeded) and their rows."""
    import torch

    rng = np.random.default_rng(config.train.seed)
    keep = np.sort(rng.permutation(len(values))[: config.max_train_events])
    return torch.as_tensor(((values[keep] - mean) / std).astype(np.float32)), keep


def _pretraining_epochs(config: ClusterConfig, events: int) -> int:
    """``pretrain_epochs``, or more for small data, so that pretraining makes ``min_pretrain_steps``."""
    batches = -(-events // config.train.batch_size)
    return max(config.pretrain_epochs, -(-config.min_pretrain_steps // batches))


def _pretrain(model, x, config: ClusterConfig, progress, should_stop) -> None:
    """Train the autoencoder on reconstruction alone."""
    pretraining = replace(config.train, epochs=_pretraining_epochs(config, len(x)))
    train(model, _EventRows(x), reconstruction_loss, pretraining, progress=progress,
          should_stop=should_stop, collate_fn=_as_is)
    model.cpu()
    check_cancel(should_stop)


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
    pretrained: PanelAutoencoder | None = None,
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
        pretrained: An autoencoder pretrained on the pooled events of this sample's panel
            (:func:`pretrain_panel`): it and the pool's standardisation are used, and this sample's own
            pretraining is skipped.

    Returns:
        The fitted clusterer (its model on the CPU).

    Raises:
        InputError: Too few events, NaN or constant channels, inconsistent reference.

    """
    import torch

    from napari_hematology.core.registry import create_model

    config.check()
    started = time.perf_counter()
    if config.clusters is None and reference is None:
        single = _single_population(values, channels, config)
        if single is not None:
            return single
    if config.clusters is None and reference is not None:
        config = replace(config, clusters=reference.shape[1])
    mean, std = _check_values(values, channels, config.clusters or 2)
    if pretrained is not None:
        _check_pretrained(pretrained, channels, config)
        mean, std = pretrained.mean, pretrained.std
    x, keep = _training_events(values, mean, std, config)
    kmeans = membership = choice = None
    if config.clusters is None:
        kmeans = over_cluster(x.numpy(), _prototype_count(config, len(x)), config.train.seed)
        # the over-clustering and consensus of the chosen count are kept (its cells become the prototypes)
        choice, membership = choose_cluster_count(x.numpy(), kmeans, config)
        config = replace(config, clusters=choice.chosen)
    populations = list(populations or [str(k) for k in range(config.clusters)])
    with seeded(config.train.seed):
        model = create_model(
            config.method,
            in_features=x.shape[1],
            clusters=config.clusters,
            prototypes=_prototype_count(config, len(x)) if kmeans is None else kmeans.cells,
            latent_dim=config.latent_dim,
            hidden=list(config.hidden),
        )
    batches = -(-len(x) // config.train.batch_size)
    pretrain_epochs = 0 if pretrained is not None else _pretraining_epochs(config, len(x))
    steps = _Phases(progress, batches, [pretrain_epochs, config.train.epochs])
    if pretrained is None:
        _pretrain(model, x, config, steps.phase(0, "pretraining"), should_stop)
    else:
        model.net.load_state_dict(pretrained.weights)
    cells = initialise_clusters(model, x, config, kmeans, membership)
    batch_reference = None
    if reference is not None:
        ids = np.asarray(sample_ids)[keep]
        membership_from_reference(model, cells, ids, reference)
        batch_reference = torch.as_tensor(np.nan_to_num(reference, nan=-1.0), dtype=torch.float32)
        dataset = _EventRows(x, torch.arange(len(x)), torch.as_tensor(ids, dtype=torch.long))
    else:
        dataset = _EventRows(x, torch.arange(len(x)))
    initial_clusters = model.membership.numpy()[cells]
    _fine_tune(model, x, dataset, config, batch_reference, initial_clusters, steps.phase(1, "clustering"),
               should_stop)
    model.cpu()
    if reference is None:
        _number_by_size(model, x)
    extra = {
        "method": config.method,
        "train_seconds": time.perf_counter() - started,
        "cluster_config": asdict(config),
        "cluster_count": {"chosen": config.clusters, "rule": "given"} if choice is None else asdict(choice),
    }
    return Clusterer(model, list(channels), mean, std, populations, extra)


def _check_pretrained(pretrained: PanelAutoencoder, channels: list[str], config: ClusterConfig) -> None:
    if pretrained.method != config.method or list(pretrained.channels) != list(channels):
        raise InputError(
            f"The panel's autoencoder was pretrained for {pretrained.method} on "
            f"{', '.join(pretrained.channels)}; this sample asks for {config.method} on "
            f"{', '.join(channels)}. Pretrain it on the same channels and method."
        )


def _check_values(values: np.ndarray, channels: list[str], clusters: int) -> tuple[np.ndarray, np.ndarray]:
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise InputError(f"Expected events x {len(channels)} channels, got shape {values.shape}.")
    if len(values) and np.isfinite(values).all() and (values.std(axis=0) < 1e-9).all():
        raise InputError(
            f"Every event has the same values on every channel: nothing to split into {clusters} clusters; "
            "leave the number of clusters to the data to keep them as one population."
        )
    if len(values) < clusters * MIN_EVENTS_PER_CLUSTER:
        raise InputError(
            f"Only {len(values)} events to split into {clusters} clusters; use fewer clusters or more events."
        )
    bad = [c for c, ok in zip(channels, np.isfinite(values).all(axis=0), strict=False) if not ok]
    if bad:
        raise InputError(
            f"Channel(s) {', '.join(bad)} hold NaN or infinite values; leave them out of the chosen channels."
        )
    std = values.std(axis=0)
    constant = [c for c, s in zip(channels, std, strict=False) if s < 1e-9]
    if constant:
        raise InputError(
            f"Channel(s) {', '.join(constant)} are constant (every event has the same value) and carry no "
            "information; leave them out of the chosen channels."
        )
    # One scale for all channels: transformed channels are already comparable, and z-scoring each one
    # would blow a noise-only channel up to the weight of the channels that separate populations.
    return values.mean(axis=0), np.full(len(channels), float(np.sqrt((std**2).mean())))


def _prototype_count(config: ClusterConfig, events: int) -> int:
    """Prototypes: ``prototypes_per_cluster`` per cluster (the most when the count is chosen), at most 100."""
    clusters = config.clusters or 2
    per_cluster = config.clusters * config.prototypes_per_cluster if config.clusters else MAX_PROTOTYPES
    wanted = min(per_cluster, MAX_PROTOTYPES)
    return max(clusters, min(wanted, events // MIN_EVENTS_PER_CLUSTER))


def _single_population(values: np.ndarray, channels: list[str], config: ClusterConfig) -> Clusterer | None:
    """With the count left to the data: one population when nothing can be split (else None).

    Fewer than two clusters' worth of events, or every channel constant (every event has the same
    values), give one population: an untrained one-prototype model that puts every event in it.
    """
    from napari_hematology.core.registry import create_model

    if values.ndim != 2 or values.shape[1] != len(channels):
        raise InputError(f"Expected events x {len(channels)} channels, got shape {values.shape}.")
    finite = np.isfinite(values).all(axis=0)
    if not finite.all():
        return None  # _check_values names the channels
    spread = values.std(axis=0) if len(values) else np.zeros(len(channels))
    if len(values) >= 2 * MIN_EVENTS_PER_CLUSTER and (spread >= 1e-9).any():
        return None
    reason = (
        f"only {len(values)} events (at least {2 * MIN_EVENTS_PER_CLUSTER} are needed to split them)"
        if len(values) < 2 * MIN_EVENTS_PER_CLUSTER
        else "every event has the same values on every channel"
    )
    with seeded(config.train.seed):
        model = create_model(
            config.method, in_features=len(channels), clusters=1, prototypes=1,
            latent_dim=config.latent_dim, hidden=list(config.hidden),
        )
    model.eval()
    mean = values.mean(axis=0) if len(values) else np.zeros(len(channels))
    choice = {"chosen": 1, "tried": [], "scores": [], "rule": f"one population: {reason}"}
    extra = {"method": config.method, "train_seconds": 0.0, "cluster_config": asdict(config),
             "cluster_count": choice}
    return Clusterer(model, list(channels), mean, np.ones(len(channels)), ["0"], extra)


class _EventRows:
    """Tensors of equal length whose batches are cut in one indexing step.

    A plain tuple of tensors is fetched row by row and stacked again, which costs more than the step of
    a small clustering model.
    """

    def __init__(self, *tensors):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index):
        return tuple(tensor[index] for tensor in self.tensors)

    def __getitems__(self, indices: list[int]):
        return self.__getitem__(indices)


def _as_is(batch):
    return batch


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


def _fine_tune(
    model, x, dataset, config: ClusterConfig, reference, initial_clusters: np.ndarray, progress, should_stop
) -> None:
    """Clustering epochs, in one training run, until the partition has settled (:class:`_Settling`)."""
    target = SelfTrainingTarget(initial_clusters, config.clusters) if config.method == "idec" else None
    train(
        model,
        dataset,
        clustering_loss(config, target, reference),
        config.train,
        progress=progress,
        should_stop=should_stop,
        on_epoch_end=_Settling(x, initial_clusters, config.stable_fraction, target),
        collate_fn=_as_is,
    )


class _Settling:
    """Epoch hook of the clustering phase: reassign every event, refresh IDEC's target, stop once settled.

    DEC's and IDEC's convergence rule (fewer than ``stable_fraction`` of the events change cluster in an
    epoch), and also stop once more events change than in the epoch before: the partition then no longer
    settles but drifts, as the reconstruction term reshapes the latent space and erodes small clusters.
    """

    def __init__(self, x, labels: np.ndarray, stable_fraction: float, target: SelfTrainingTarget | None):
        self.x = x
        self.labels = labels
        self.stable_fraction = stable_fraction
        self.target = target
        self.changed = 1.0

    def __call__(self, epoch: int, model, history: TrainHistory) -> bool:
        q = predict(model, self.x, batch_size=8192)
        if self.target is not None:
            self.target.refresh(q)
        labels = q.argmax(axis=1)
        changed = float(np.mean(labels != self.labels))
        settled = changed < self.stable_fraction or changed > self.changed
        self.labels, self.changed = labels, changed
        return settled


def _number_by_size(model, x) -> None:
    """Renumber clusters by size, largest first, so that unsupervised runs name clusters repeatably."""
    import torch

    sizes = np.bincount(predict(model, x, batch_size=8192).argmax(axis=1), minlength=model.clusters)
    new_index = np.empty(model.clusters, dtype=np.int64)
    new_index[np.argsort(-sizes, kind="stable")] = np.arange(model.clusters)
    model.membership.copy_(torch.as_tensor(new_index)[model.membership])
