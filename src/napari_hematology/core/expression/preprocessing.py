"""Preprocessing of expression rows, fitted once and applied batch by batch (never densifying everything).

Every step is row-wise except the per-gene statistics, which are accumulated in one streamed pass:

1. ``counts``: library-size normalisation to ``target_sum`` then ``log1p``; ``intensities`` (microarrays):
   clip to ``[floor, ceiling]``, ``log2``, then (``standardise_arrays``) centre and scale each sample over
   its genes, which removes array-to-array scale differences (Dudoit, Fridlyand & Speed 2002);
   ``normalized``: values used as they are.
2. Highly variable genes: the ``n_top_genes`` genes of highest variance after step 1.
3. Optional supervised gene selection (``select_genes``): of those, the genes that best separate the
   training classes (one-way ANOVA F statistic on the labelled cells), fitted on the training data only.
4. Scaling: per-gene z-score with the fitted mean and standard deviation, clipped to +-10.

New data is aligned to the fitted genes by name; a gene the new data lacks is filled with its fitted
mean (so it is 0 after scaling) and reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import sparse

from napari_hematology.core.errors import InputError
from napari_hematology.core.expression.choices import VALUE_KINDS
from napari_hematology.core.expression.data import ExpressionData
from napari_hematology.core.progress import ProgressCallback, StopCallback, tracked

CHUNK_ROWS = 2048
Z_CLIP = 10.0


@dataclass
class PreprocessConfig:
    """How raw values become model inputs.

    Attributes:
        values: ``counts`` (UMI/read counts), ``intensities`` (microarray) or ``normalized`` (already
            log-normalised or scaled; negative values allowed).
        n_top_genes: Keep this many highly variable genes; None keeps all.
        select_genes: Then keep only this many genes with the highest ANOVA F statistic between the
            training classes (useful with few samples, e.g. patient microarrays); None skips it.
        target_sum: Library size that each cell's counts are scaled to before ``log1p``.
        intensity_floor: Microarray values below this are raised to it before ``log2``.
        intensity_ceiling: Microarray values above this are lowered to it.
        standardise_arrays: Microarrays: give each sample's log2 values mean 0 and standard deviation 1
            over all of its genes (a per-sample step, so it never uses other samples).
        scale: Z-score each gene.
        min_gene_overlap: Smallest fraction of the model's genes that new data must contain.
    """

    values: str = "counts"
    n_top_genes: int | None = 2000
    select_genes: int | None = None
    target_sum: float = 1e4
    intensity_floor: float = 20.0
    intensity_ceiling: float = 16000.0
    standardise_arrays: bool = True
    scale: bool = True
    min_gene_overlap: float = 0.5


@dataclass
class Preprocessor:
    """A fitted preprocessing: the model's genes (in input order) and their statistics."""

    config: PreprocessConfig
    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    notes: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict:
        """JSON-serialisable form, stored in the model's ``config.json``."""
        return {
            "config": asdict(self.config),
            "genes": list(self.genes),
            "mean": self.mean.round(6).tolist(),
            "std": self.std.round(6).tolist(),
        }

    @classmethod
    def from_metadata(cls, metadata: dict) -> Preprocessor:
        """Rebuild from :meth:`to_metadata` output."""
        return cls(
            config=PreprocessConfig(**metadata["config"]),
            genes=list(metadata["genes"]),
            mean=np.asarray(metadata["mean"], dtype=np.float32),
            std=np.asarray(metadata["std"], dtype=np.float32),
        )

    def column_index(self, data: ExpressionData) -> np.ndarray:
        """Position in ``data`` of each model gene (-1 where missing), after checking the overlap.

        Missing genes are reported in ``data.notes``.

        Raises:
            InputError: Too few of the model's genes are present in ``data``.
        """
        position = {gene: index for index, gene in enumerate(data.genes)}
        index = np.array([position.get(gene, -1) for gene in self.genes], dtype=np.int64)
        missing = int((index < 0).sum())
        found = len(self.genes) - missing
        if found < self.config.min_gene_overlap * len(self.genes):
            example = ", ".join(self.genes[:3])
            raise InputError(
                f"{data.name}: only {found} of the model's {len(self.genes)} genes are present "
                f"(model genes look like {example}; the file's look like "
                f"{', '.join(map(str, data.genes[:3]))}). Use data with the same gene naming "
                "(symbols vs. Ensembl ids, species) or retrain the model on this data."
            )
        note = (f"{data.name}: {missing} of {len(self.genes)} model genes missing; "
                "filled with the training mean.")
        if missing and note not in data.notes:
            data.notes.append(note)
        return index

    def transform(self, rows, column_index: np.ndarray) -> np.ndarray:
        """Turn raw rows (dense or sparse, all of the data's genes) into dense model inputs.

        Args:
            rows: Raw values of some cells, with the columns of the data they came from.
            column_index: From :meth:`column_index` for that data.

        Returns:
            float32 array (cells, model genes).
        """
        normalised = normalise_rows(rows, self.config)
        present = column_index >= 0
        selected = normalised[:, column_index[present]]
        selected = selected.toarray() if sparse.issparse(selected) else np.asarray(selected)
        out = np.tile(self.mean, (selected.shape[0], 1))
        out[:, present] = selected
        if self.config.scale:
            out = np.clip((out - self.mean) / self.std, -Z_CLIP, Z_CLIP)
        return out.astype(np.float32, copy=False)


def check_values(data: ExpressionData, values: str) -> None:
    """Refuse NaN or infinite values, and negative values where counts are expected.

    Raises:
        InputError: Names the problem, how many values and what to do.
    """
    if values not in VALUE_KINDS:
        raise InputError(f"Unknown value kind {values!r}; choose one of {', '.join(VALUE_KINDS)}.")
    stored = data.matrix.data if sparse.issparse(data.matrix) else data.matrix
    bad = int((~np.isfinite(stored)).sum())
    if bad:
        raise InputError(
            f"{data.name}: {bad} NaN or infinite expression value(s). Fill them (e.g. with 0 for "
            "counts) or remove those cells/genes before training."
        )
    if values == "counts":
        negative = int((stored < 0).sum())
        if negative:
            raise InputError(
                f"{data.name}: {negative} negative value(s), but counts cannot be negative. If the matrix "
                "is already log-normalised or scaled, use values 'normalized' (--values normalized); for "
                "microarray intensities use 'intensities'."
            )


def normalise_rows(rows, config: PreprocessConfig):
    """Step 1 of the preprocessing on some rows; sparse input stays sparse.

    Args:
        rows: Raw values (cells, genes), numpy or scipy sparse.
        config: The preprocessing settings.

    Returns:
        Normalised rows of the same kind.
    """
    if config.values == "normalized":
        return rows.astype(np.float32)
    if config.values == "intensities":
        dense = rows.toarray() if sparse.issparse(rows) else np.asarray(rows, dtype=np.float32)
        logged = np.log2(np.clip(dense, config.intensity_floor, config.intensity_ceiling))
        return standardise_rows(logged) if config.standardise_arrays else logged
    totals = np.asarray(rows.sum(axis=1), dtype=np.float64).ravel()
    factors = np.divide(config.target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    if sparse.issparse(rows):
        scaled = sparse.csr_matrix(sparse.diags(factors.astype(np.float32)) @ rows)
        scaled.data = np.log1p(scaled.data)
        return scaled
    return np.log1p(np.asarray(rows, dtype=np.float32) * factors[:, None].astype(np.float32))


def standardise_rows(values: np.ndarray) -> np.ndarray:
    """Centre and scale every row to mean 0 and standard deviation 1 (constant rows are only centred)."""
    centred = values - values.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 1e-6, spread, 1.0)


def fit_preprocessing(
    data: ExpressionData,
    config: PreprocessConfig,
    labels: np.ndarray | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Preprocessor:
    """Choose the model's genes and their scaling statistics in one streamed pass.

    Args:
        data: Training data (raw values).
        config: The preprocessing settings.
        labels: Class of every cell (``""`` where unlabelled); needed when ``config.select_genes`` is set.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The fitted preprocessor.

    Raises:
        InputError: ``select_genes`` is set but no labels are given, or it is smaller than 1.
    """
    check_values(data, config.values)
    supervised = config.select_genes is not None
    if supervised and (labels is None or config.select_genes < 1):
        raise InputError(
            f"Gene selection needs class labels and a gene count of 1 or more (got {config.select_genes})."
        )
    classes, members = np.unique(labels, return_inverse=True) if supervised else ([], None)
    statistics = GeneStatistics(data.n_genes, len(classes))
    starts = range(0, data.n_cells, CHUNK_ROWS)
    for start in tracked(starts, len(starts), progress, should_stop, "gene statistics"):
        chunk = normalise_rows(data.matrix[start : start + CHUNK_ROWS], config)
        statistics.add(chunk, None if members is None else members[start : start + CHUNK_ROWS])
    mean, variance = statistics.mean_and_variance()
    n_keep = data.n_genes if config.n_top_genes is None else min(config.n_top_genes, data.n_genes)
    keep = np.argsort(-variance, kind="stable")[:n_keep]
    if supervised:
        labelled = np.flatnonzero(classes != "")
        f_statistic = statistics.f_statistic(labelled)[keep]
        keep = keep[np.argsort(-f_statistic, kind="stable")[: config.select_genes]]
    keep = np.sort(keep)
    std = np.sqrt(variance[keep])
    std[std < 1e-6] = 1.0
    return Preprocessor(
        config=config,
        genes=[str(gene) for gene in data.genes[keep]],
        mean=mean[keep].astype(np.float32),
        std=std.astype(np.float32),
        notes=list(data.notes),
    )


class GeneStatistics:
    """Per-gene sums and sums of squares over all cells and per class, accumulated chunk by chunk."""

    def __init__(self, n_genes: int, n_groups: int) -> None:
        self.n_cells = 0
        self.total = np.zeros(n_genes)
        self.squares = np.zeros(n_genes)
        self.group_count = np.zeros(n_groups)
        self.group_total = np.zeros((n_groups, n_genes))
        self.group_squares = np.zeros((n_groups, n_genes))

    def add(self, chunk, groups: np.ndarray | None) -> None:
        """Add normalised rows (dense or sparse); ``groups`` gives each row's class index, if tracked."""
        squared = chunk.multiply(chunk) if sparse.issparse(chunk) else np.square(chunk)
        self.n_cells += chunk.shape[0]
        self.total += np.asarray(chunk.sum(axis=0)).ravel()
        self.squares += np.asarray(squared.sum(axis=0)).ravel()
        if groups is None:
            return
        one_hot = sparse.csr_matrix(
            (np.ones(len(groups)), (groups, np.arange(len(groups)))),
            shape=(len(self.group_count), len(groups)),
        )
        self.group_count += np.bincount(groups, minlength=len(self.group_count))
        pairs = ((self.group_total, one_hot @ chunk), (self.group_squares, one_hot @ squared))
        for accumulated, values in pairs:
            accumulated += values.toarray() if sparse.issparse(values) else np.asarray(values)

    def mean_and_variance(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) variance of every gene over all cells."""
        mean = self.total / self.n_cells
        return mean, np.maximum(self.squares / self.n_cells - mean**2, 0.0)

    def f_statistic(self, groups: np.ndarray) -> np.ndarray:
        """One-way ANOVA F statistic of every gene between the given groups (0 for constant genes)."""
        count = self.group_count[groups][:, None]
        group_mean = self.group_total[groups] / count
        grand_mean = self.group_total[groups].sum(axis=0) / count.sum()
        between = (count * (group_mean - grand_mean) ** 2).sum(axis=0) / max(len(groups) - 1, 1)
        within_sum = (self.group_squares[groups] - count * group_mean**2).sum(axis=0)
        within = np.maximum(within_sum, 0.0) / max(count.sum() - len(groups), 1)
        return np.divide(between, within, out=np.zeros_like(between), where=within > 1e-12)


def transformed_batches(data: ExpressionData, preprocessor: Preprocessor, batch_size: int = CHUNK_ROWS):
    """Yield dense model inputs for consecutive row chunks of ``data`` (aligned to the model's genes)."""
    index = preprocessor.column_index(data)
    for start in range(0, data.n_cells, batch_size):
        yield preprocessor.transform(data.matrix[start : start + batch_size], index)


class RowCollator:
    """DataLoader ``collate_fn`` that turns a list of row numbers into one dense preprocessed batch.

    With a dataset of row numbers (``np.arange(n_cells)``) only one batch is ever dense in memory.
    """

    def __init__(self, data: ExpressionData, preprocessor: Preprocessor) -> None:
        self.matrix = data.matrix
        self.preprocessor = preprocessor
        self.index = preprocessor.column_index(data)

    def __call__(self, rows: list[int]):
        """Dense float32 tensor of the preprocessed rows."""
        import torch

        picked = self.matrix[np.sort(np.asarray(rows))]
        return torch.from_numpy(self.preprocessor.transform(picked, self.index))
