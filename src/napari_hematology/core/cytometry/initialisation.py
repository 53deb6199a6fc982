"""Initial clusters of IDEC and VaDE: prototypes placed on a consensus over-clustering of the events.

The events are over-clustered with k-means (one cell per prototype); the cells are grouped into clusters
by the vote of several over-clusterings, with small far-off groups (doublets, debris) joining a real
cluster instead of taking one; with reference fractions the prototypes are then regrouped to follow them.
Without a given number of clusters, the number is chosen from the data (:func:`choose_cluster_count`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hematology.core.cytometry.cluster_config import ClusterConfig
from napari_hematology.core.training import predict

CONSENSUS_EVENTS = 2000
MAX_REGROUP_PASSES = 20
EPSILON = 1e-8
COVARIANCE_RIDGE = 1e-3


MAX_LLOYD_ITERATIONS = 300
LLOYD_TOLERANCE = 1e-4  # centres moving less than this (squared, relative to the values' variance): done


@dataclass
class OverClustering:
    """k-means cells of the events: one per prototype.

    Attributes:
        centres: (cells, channels) cell centres.
        labels: Cell of every event it was fitted on.

    """

    centres: np.ndarray
    labels: np.ndarray

    @property
    def cells(self) -> int:
        """Number of cells."""
        return len(self.centres)

    def predict(self, values: np.ndarray) -> np.ndarray:
        """The nearest cell of every row of ``values``."""
        return _nearest(np.asarray(values, dtype=np.float32), self.centres)


def over_cluster(values: np.ndarray, prototypes: int, seed: int) -> OverClustering:
    """k-means with one cell per prototype (the over-clustering that the consensus groups).

    Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, ``2 + log k`` candidates per centre, as
    scikit-learn seeds), then Lloyd iterations until the centres stop moving. Written in numpy: on a few
    thousand events scikit-learn's per-call checks cost more than the arithmetic, and importing it took
    longer than the clustering.

    Args:
        values: (events, channels) values.
        prototypes: Number of cells.
        seed: Seed of the k-means++ draws.

    Returns:
        The cells.

    """
    values = np.asarray(values, dtype=np.float32)
    centres = _kmeans_plus_plus(values, prototypes, np.random.default_rng(seed))
    tolerance = LLOYD_TOLERANCE * float(values.var(axis=0).mean())
    for _ in range(MAX_LLOYD_ITERATIONS):
        moved = _cell_means(values, _nearest(values, centres), centres)
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        if shift <= tolerance:
            break
    return OverClustering(centres, _nearest(values, centres))


def _nearest(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre of every row: the least ``|c|^2 - 2 x.c`` (``|x|^2`` is the same for a row)."""
    return (np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * (values @ centres.T)).argmin(axis=1)


def _squared_distances(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(events, centres) squared Euclidean distances."""
    products = values @ centres.T
    norms = np.einsum("ij,ij->i", centres, centres)
    return np.maximum(np.einsum("ij,ij->i", values, values)[:, None] - 2.0 * products + norms[None, :], 0.0)


def _cell_means(values: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Mean of each cell's events; a cell that lost every event keeps its centre."""
    counts = np.bincount(labels, minlength=len(centres)).astype(np.float32)
    sums = np.stack(
        [np.bincount(labels, weights=column, minlength=len(centres)) for column in values.T], axis=1
    ).astype(np.float32)
    means = centres.copy()
    occupied = counts > 0
    means[occupied] = sums[occupied] / counts[occupied, None]
    return means


def _kmeans_plus_plus(values: np.ndarray, centres: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: each new centre is the best of ``2 + log k`` draws by squared distance."""
    trials = 2 + int(np.log(centres))
    picked = [int(rng.integers(len(values)))]
    closest = _squared_distances(values, values[picked])[:, 0]
    for _ in range(1, centres):
        cumulative = np.cumsum(closest, dtype=np.float64)
        if cumulative[-1] <= 0:
            candidates = rng.integers(len(values), size=trials)
        else:
            candidates = np.minimum(np.searchsorted(cumulative, rng.random(trials) * cumulative[-1]),
                                    len(values) - 1)
        candidate_closest = np.minimum(closest[:, None], _squared_distances(values, values[candidates]))
        best = int(np.argmin(candidate_closest.sum(axis=0)))
        picked.append(int(candidates[best]))
        closest = candidate_closest[:, best]
    return values[picked].copy()


def initialise_clusters(
    model,
    x,
    config: ClusterConfig,
    kmeans: OverClustering | None = None,
    membership: np.ndarray | None = None,
) -> np.ndarray:
    """Place the prototypes on a consensus over-clustering of the events; return each event's prototype.

    The events are over-clustered with k-means (one cell per prototype) and the cells are grouped into
    clusters by consensus (:func:`_consensus_membership`). Each prototype then starts at the mean latent
    code of its cell. ``kmeans`` and ``membership`` (from :func:`choose_cluster_count`) are used when
    given.
    """
    import torch

    prototypes = len(model.membership)
    values = x.numpy()
    if kmeans is None:
        kmeans = over_cluster(values, prototypes, config.train.seed)
    cells = kmeans.labels
    if membership is None:
        membership = _consensus_membership(values, cells, kmeans, config)
    model.membership.copy_(torch.as_tensor(membership, dtype=torch.long))
    latent = predict(model, x, batch_size=8192, forward=lambda net, b: net.embed(b))
    counts = np.bincount(cells, minlength=prototypes)
    centers = np.stack([latent[cells == k].mean(axis=0) for k in range(prototypes)])
    if config.method == "idec":
        model.centers.data = torch.as_tensor(centers, dtype=torch.float32)
        return cells
    # Start every component with the pooled within-cell variance: the initial responsibilities then
    # follow the k-means cells instead of being captured by the widest component.
    pooled_variance = ((latent - centers[cells]) ** 2).mean(axis=0) + 1e-6
    model.prior_logits.data = torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)
    model.prior_means.data = torch.as_tensor(centers, dtype=torch.float32)
    logvars = np.tile(np.log(pooled_variance), (prototypes, 1))
    model.prior_logvars.data = torch.as_tensor(logvars, dtype=torch.float32)
    return cells


def _consensus_membership(
    values: np.ndarray, cells: np.ndarray, kmeans: OverClustering, config: ClusterConfig
) -> np.ndarray:
    """Group the k-means cells into ``config.clusters`` clusters by consensus over several over-clusterings.

    One over-clustering (k-means cells merged by complete linkage of their centres, the FlowSOM recipe)
    depends much on the k-means seed, most for small populations. ``init_restarts`` of them (the given
    one plus k-means restarts fitted on a subsample) vote on how often the events of two cells end up
    together; the cells are then grouped by average linkage of that co-association, as FlowSOM's
    consensus metaclustering does. Both linkages are cut so that every cluster holds at least
    ``min_cluster_fraction`` of the events (:func:`cut_with_min_size`).
    """
    runs = _over_clusterings(values, kmeans, config)
    return _consensus_for(runs, cells, kmeans.cells, config.clusters, config.min_cluster_fraction)[0]


def _over_clusterings(values: np.ndarray, kmeans: OverClustering, config: ClusterConfig) -> list[tuple]:
    """The given k-means and ``init_restarts - 1`` restarts on subsamples, each with its centre linkage."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist, squareform

    prototypes = kmeans.cells
    rng = np.random.default_rng(config.train.seed)
    runs = []
    for restart in range(config.init_restarts):
        if restart:
            subset = rng.choice(len(values), min(len(values), CONSENSUS_EVENTS), replace=False)
            kmeans = over_cluster(values[subset], prototypes, int(rng.integers(2**31 - 1)))
        assigned = kmeans.predict(values) if restart else kmeans.labels  # the given one was fitted on them
        distances = pdist(kmeans.centres)
        runs.append(
            (assigned, TreeCuts(linkage(distances, method="complete")), squareform(distances),
             np.bincount(assigned, minlength=prototypes))
        )
    return runs


def _consensus_for(runs: list[tuple], cells: np.ndarray, prototypes: int, clusters: int,
                   min_fraction: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """The cells' consensus grouping into ``clusters`` clusters, from over-clusterings cut at that count.

    Also returns each over-clustering's grouping of its own cells at that count.
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    together = np.zeros((prototypes, prototypes))
    groupings = []
    for assigned, tree, distances, sizes in runs:
        groupings.append(cut_with_min_size(tree, distances, sizes, clusters, min_fraction))
        shares = np.zeros((prototypes, clusters))
        np.add.at(shares, (cells, groupings[-1][assigned]), 1.0)
        shares /= np.maximum(shares.sum(axis=1, keepdims=True), 1.0)
        together += shares @ shares.T
    distance = 1.0 - together / len(runs)
    np.fill_diagonal(distance, 0.0)
    consensus = cut_with_min_size(
        linkage(squareform(distance, checks=False), method="average"),
        distance,
        np.bincount(cells, minlength=prototypes),
        clusters,
        min_fraction,
    )
    return consensus, groupings


@dataclass
class ClusterCountChoice:
    """How the number of clusters was chosen from the data.

    Attributes:
        chosen: The number of clusters.
        tried: The counts compared.
        scores: Per count tried, the integrated completed likelihood (lower is better); None where a
            cluster was too small to estimate its covariance.
        rule: The rule, in words.

    """

    chosen: int
    tried: list[int]
    scores: list[float | None]
    rule: str

    def summary(self) -> str:
        """One line: the count and how it was chosen."""
        return f"{self.chosen} clusters, chosen from the data ({self.rule})"


def choose_cluster_count(
    x: np.ndarray, kmeans: OverClustering, config: ClusterConfig
) -> tuple[ClusterCountChoice, np.ndarray]:
    """Choose the number of clusters: over-cluster, group by consensus at each count, score each grouping.

    For every count from 2 to ``max_clusters`` the consensus over the same over-clusterings
    (:func:`_consensus_membership`) groups the cells, and the grouping is scored by its integrated
    completed likelihood (ICL; Biernacki, Celeux & Govaert 2000) on the standardised marker values: the
    classification log-likelihood of one full-covariance Gaussian per cluster, penalised by
    ``parameters x log(events)``. Unlike BIC, ICL does not reward splitting one population into
    overlapping pieces. The smallest count whose ICL per event is within ``count_tolerance`` of the best
    is chosen (the curve is flat near its minimum).

    Args:
        x: Standardised marker values of the training events (over-clustered, and scored).
        kmeans: The over-clustering of ``x`` (:func:`over_cluster`).
        config: ``max_clusters``, ``count_tolerance``, ``min_cluster_fraction``, restarts and seed.

    Returns:
        The choice, and the cluster of every cell for the chosen count.

    """
    prototypes, cells = kmeans.cells, kmeans.labels
    runs = _over_clusterings(x, kmeans, config)
    run_moments = [CellMoments.of(x, assigned, prototypes) for assigned, *_ in runs]
    consensus_moments = run_moments[0]  # the first run is the given over-clustering: its cells are ``cells``
    largest = min(config.max_clusters, prototypes, len(x) // max(x.shape[1] + 1, 1))
    if config.min_cluster_fraction > 0:
        largest = min(largest, int(np.floor(1 / config.min_cluster_fraction)))
    tried, scores, memberships = [], [], {}
    for clusters in range(2, max(largest, 2) + 1):
        membership, groupings = _consensus_for(
            runs, cells, prototypes, clusters, config.min_cluster_fraction
        )
        memberships[clusters] = membership
        tried.append(clusters)
        # the mean over the consensus and every over-clustering cut at this count: one grouping alone
        # makes a noisy curve
        values = [
            moments.icl(grouping, clusters)
            for moments, grouping in zip([consensus_moments, *run_moments], [membership, *groupings],
                                         strict=True)
        ]
        scores.append(None if any(v is None for v in values) else float(np.mean(values)))
    finite = [score for score in scores if score is not None]
    if not finite:
        chosen = 2
    else:
        best = min(finite)
        chosen = next(
            k for k, score in zip(tried, scores, strict=True)
            if score is not None and (score - best) / len(x) <= config.count_tolerance
        )
    rule = (
        f"smallest ICL within {config.count_tolerance:g} per event of the best over "
        f"{tried[0]}-{tried[-1]} consensus clusterings"
    )
    rounded = [None if score is None else round(float(score), 1) for score in scores]
    return ClusterCountChoice(chosen, tried, rounded, rule), memberships[chosen]


def integrated_completed_likelihood(x: np.ndarray, labels: np.ndarray, clusters: int) -> float | None:
    """ICL-BIC of a hard partition with one full-covariance Gaussian per cluster (lower is better).

    Returns None when a cluster holds too few events to estimate its covariance.
    """
    return CellMoments.of(x, labels, clusters).icl(np.arange(clusters), clusters)


@dataclass
class CellMoments:
    """Event count, sum and sum of outer products per cell of a partition of the events (float64).

    Any grouping of the cells has its clusters' means and covariances in a few sums of these, so scoring
    a grouping does not touch the events again.
    """

    counts: np.ndarray
    sums: np.ndarray
    products: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, cells: np.ndarray, count: int) -> CellMoments:
        """The moments of ``count`` cells; ``cells`` gives the cell of every row of ``x``."""
        values = np.asarray(x, dtype=np.float64)
        onehot = np.zeros((len(values), count))
        onehot[np.arange(len(values)), cells] = 1.0
        outer = (values[:, :, None] * values[:, None, :]).reshape(len(values), -1)
        products = (onehot.T @ outer).reshape(count, values.shape[1], values.shape[1])
        return cls(onehot.sum(axis=0), onehot.T @ values, products)

    def icl(self, grouping: np.ndarray, clusters: int) -> float | None:
        """ICL-BIC (see :func:`integrated_completed_likelihood`) of the cells grouped by ``grouping``."""
        members = np.zeros((clusters, len(grouping)))
        members[grouping, np.arange(len(grouping))] = 1.0
        counts = members @ self.counts
        events, dims = self.counts.sum(), self.sums.shape[1]
        if (counts <= dims).any():
            return None
        sums = members @ self.sums
        outer_sums = np.einsum("kc,cij->kij", members, self.products)
        scatter = outer_sums - sums[:, :, None] * sums[:, None, :] / counts[:, None, None]
        covariances = scatter / (counts - 1)[:, None, None] + COVARIANCE_RIDGE * np.eye(dims)
        _, log_dets = np.linalg.slogdet(covariances)
        # sum over members of log N(x | mean, covariance): the Mahalanobis terms add up to (count - 1) * dims
        log_likelihood = np.sum(
            counts * np.log(counts / events)
            - 0.5 * (counts * (dims * np.log(2 * np.pi) + log_dets) + (counts - 1) * dims)
        )
        parameters = clusters * (dims + dims * (dims + 1) / 2) + clusters - 1
        return float(-2.0 * log_likelihood + parameters * np.log(events))


class TreeCuts:
    """A linkage tree and its flat cuts (scipy's ``fcluster`` by cluster count), each cut made once.

    Choosing the cluster count cuts the same trees at the same counts many times; ``fcluster`` checks the
    whole tree on every call.
    """

    def __init__(self, tree: np.ndarray) -> None:
        self.tree = tree
        self._cuts: dict[int, np.ndarray] = {}

    def cut(self, count: int) -> np.ndarray:
        """The group (from 0) of every leaf when the tree is cut into at most ``count`` groups."""
        if count not in self._cuts:
            from scipy.cluster.hierarchy import fcluster

            self._cuts[count] = fcluster(self.tree, count, criterion="maxclust") - 1
        return self._cuts[count]


def cut_with_min_size(
    tree: np.ndarray | TreeCuts, distance: np.ndarray, sizes: np.ndarray, clusters: int, min_fraction: float
) -> np.ndarray:
    """Cut a linkage tree of cells into ``clusters`` groups that each hold ``min_fraction`` of the events.

    Cutting into exactly ``clusters`` groups spends clusters on small far-off groups (doublets, debris)
    and merges real populations instead. The tree is cut ever finer until ``clusters`` groups are big
    enough; the smaller groups then join the big group they are closest to (mean distance).

    Args:
        tree: Scipy linkage matrix over the cells, or its :class:`TreeCuts` (cuts kept for the next call).
        distance: (cells, cells) distances the tree was built from.
        sizes: Events per cell.
        clusters: Number of groups wanted.
        min_fraction: Smallest share of the events a group may hold.

    Returns:
        The group (0..clusters-1) of every cell.

    """
    cuts = tree if isinstance(tree, TreeCuts) else TreeCuts(tree)
    minimum = min_fraction * sizes.sum()
    for count in range(clusters, len(sizes) + 1):
        groups = cuts.cut(count)
        group_sizes = np.bincount(groups, weights=sizes)
        big = np.flatnonzero(group_sizes >= minimum)
        if len(big) >= clusters:
            break
    else:
        groups = cuts.cut(clusters)
        group_sizes = np.bincount(groups, weights=sizes)
        big = np.arange(len(group_sizes))
    big = big[np.argsort(-group_sizes[big], kind="stable")][:clusters]
    mean_distance = np.stack([distance[:, groups == group].mean(axis=1) for group in big], axis=1)
    membership = mean_distance.argmin(axis=1)
    for index, group in enumerate(big):
        membership[groups == group] = index
    return membership


def membership_from_reference(
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
