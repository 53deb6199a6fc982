"""Loading expression matrices (cells x genes) from .h5ad, .csv/.tsv and 10x-style .h5 files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from napari_hematology.core.errors import InputError

EXPRESSION_SUFFIXES = (".h5ad", ".csv", ".tsv", ".h5")
# What h5py raises on a damaged HDF5 file (found by truncating, overwriting and flipping bytes of .h5 and
# .h5ad files): OSError ("truncated file", "bad heap index"), KeyError and RuntimeError for damaged
# objects and attributes; ValueError when stored names are not text. anndata adds its IORegistryError for
# an element whose encoding it does not know (see _read_h5ad). pandas' parser errors are ValueErrors.
HDF5_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError)
CSV_READ_ERRORS = (ValueError, OSError)
CELL_ID_COLUMNS = ("", "cell", "cell_id", "barcode", "sample", "patient", "Unnamed: 0")


@dataclass
class ExpressionData:
    """An expression matrix with its gene names and per-cell annotations.

    Attributes:
        matrix: Raw values, cells x genes: a numpy array or a scipy CSR matrix (kept sparse).
        genes: Gene names, one per column.
        cells: Cell (or sample) identifiers, one per row.
        obs: Per-cell annotation columns (candidate label columns), indexed like ``cells``.
        name: Where the data came from, for messages.
        notes: Conversions made on the way that the user should know about.
    """

    matrix: np.ndarray | sparse.csr_matrix
    genes: np.ndarray
    cells: np.ndarray
    obs: pd.DataFrame = field(default_factory=pd.DataFrame)
    name: str = "data"
    notes: list[str] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        """Number of rows."""
        return self.matrix.shape[0]

    @property
    def n_genes(self) -> int:
        """Number of columns."""
        return self.matrix.shape[1]

    def subset(self, rows: np.ndarray) -> ExpressionData:
        """The same data restricted to ``rows`` (integer indices or a boolean mask)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return ExpressionData(
            matrix=self.matrix[rows],
            genes=self.genes,
            cells=self.cells[rows],
            obs=self.obs.iloc[rows].reset_index(drop=True),
            name=self.name,
            notes=list(self.notes),
        )


def make_expression_data(matrix, genes, cells=None, obs=None, name: str = "data") -> ExpressionData:
    """Build :class:`ExpressionData` from arrays, checking shapes and making gene names unique.

    Args:
        matrix: Cells x genes values (numpy array, scipy sparse matrix or DataFrame).
        genes: Gene names, one per column.
        cells: Cell identifiers; numbered from 0 when None.
        obs: Per-cell annotations (DataFrame or dict of columns), one row per cell.
        name: Name used in messages.

    Raises:
        InputError: Shapes disagree or the matrix is empty.
    """
    try:
        matrix = sparse.csr_matrix(matrix, dtype=np.float32) if sparse.issparse(matrix) else (
            np.asarray(matrix, dtype=np.float32)
        )
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: the expression matrix is not numeric ({error}).") from error
    if matrix.ndim != 2 or min(matrix.shape) == 0:
        raise InputError(f"{name}: the expression matrix is empty (shape {matrix.shape}).")
    genes = np.asarray(genes).astype(str)
    if len(genes) != matrix.shape[1]:
        raise InputError(f"{name}: {len(genes)} gene names for {matrix.shape[1]} matrix columns.")
    cells = np.arange(matrix.shape[0]).astype(str) if cells is None else np.asarray(cells).astype(str)
    obs = pd.DataFrame(obs if obs is not None else {}).reset_index(drop=True)
    if len(cells) != matrix.shape[0] or (len(obs.columns) and len(obs) != matrix.shape[0]):
        raise InputError(f"{name}: cell annotations do not match the {matrix.shape[0]} matrix rows.")
    data = ExpressionData(matrix, genes, cells, obs, name)
    _drop_duplicate_genes(data)
    return data


def _drop_duplicate_genes(data: ExpressionData) -> None:
    _, first = np.unique(data.genes, return_index=True)
    if len(first) == data.n_genes:
        return
    keep = np.sort(first)
    data.notes.append(
        f"{data.name}: {data.n_genes - len(keep)} duplicated gene name(s); kept the first column of each."
    )
    data.matrix = data.matrix[:, keep]
    data.genes = data.genes[keep]


def load_expression(path: str | Path, label_key: str | None = None) -> ExpressionData:
    """Read an expression file: ``.h5ad`` (anndata), ``.csv``/``.tsv`` (cells x genes) or 10x-style ``.h5``.

    For ``.h5ad`` the annotations are the ``obs`` columns; for CSV/TSV the first column holds cell ids when
    it is not numeric, non-numeric columns are annotations and ``label_key`` (if given) is always taken as
    an annotation; for ``.h5`` every 1-D dataset with one value per cell (e.g. ``Y``) is an annotation and
    gene names come from a ``genes``/``gene_names``/``var_names`` dataset when present.

    Args:
        path: The file.
        label_key: Column to treat as labels; checked to exist.

    Returns:
        The loaded data; sparse matrices stay sparse.

    Raises:
        InputError: Missing or unreadable file, unsupported suffix, or ``label_key`` not found.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix not in EXPRESSION_SUFFIXES:
        raise InputError(
            f"{path.name}: unsupported format '{path.suffix}'. Use one of {', '.join(EXPRESSION_SUFFIXES)}."
        )
    reader = {".h5ad": _read_h5ad, ".h5": _read_h5}.get(suffix, _read_delimited)
    data = reader(path, label_key)
    if label_key is not None:
        labels_of(data, label_key)
    return data


def _unreadable(path: Path, error: BaseException) -> InputError:
    return InputError(f"{path.name}: cannot be read ({type(error).__name__}: {error}).")


def _read_h5ad(path: Path, label_key: str | None) -> ExpressionData:
    import warnings

    import anndata
    from anndata._io.specs.registry import IORegistryError  # not exported; in anndata since 0.8

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # old files: anndata moves .uns entries
            adata = anndata.read_h5ad(path)
    except (*HDF5_READ_ERRORS, IORegistryError) as error:
        raise _unreadable(path, error) from error
    return make_expression_data(adata.X, adata.var_names, adata.obs_names, adata.obs, path.name)


GENE_NAME_DATASETS = ("genes", "gene_names", "var_names", "features")


def _read_h5(path: Path, label_key: str | None) -> ExpressionData:
    try:
        matrix, genes, obs = _h5_arrays(path)
    except InputError:
        raise
    except HDF5_READ_ERRORS as error:
        raise _unreadable(path, error) from error
    n_genes = matrix.shape[1]
    data_notes = []
    if genes is None:
        genes = np.array([f"gene_{index}" for index in range(n_genes)])
        data_notes.append(f"{path.name}: no gene names stored; columns are named gene_0, gene_1, ...")
    data = make_expression_data(matrix, genes, obs=obs, name=path.name)
    data.notes.extend(data_notes)
    return data


def _h5_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """The matrix ``X``, the gene names (None when not stored) and the per-cell datasets of an .h5 file."""
    import h5py

    with h5py.File(path, "r") as handle:
        if "X" not in handle or not isinstance(handle["X"], h5py.Dataset) or handle["X"].ndim != 2:
            raise InputError(
                f"{path.name}: no 2-D dataset 'X' (cells x genes) found; it holds {', '.join(handle)}."
            )
        matrix = handle["X"][()]
        genes = next((_decode(handle[name][()]) for name in GENE_NAME_DATASETS if name in handle), None)
        obs = {
            name: _decode(item[()])
            for name, item in handle.items()
            if isinstance(item, h5py.Dataset) and item.ndim == 1 and len(item) == len(matrix)
            and name not in GENE_NAME_DATASETS
        }
    return matrix, genes, obs


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values


def _read_delimited(path: Path, label_key: str | None) -> ExpressionData:
    try:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except CSV_READ_ERRORS as error:
        raise _unreadable(path, error) from error
    cells = None
    first = str(table.columns[0])
    is_cell_id = first in CELL_ID_COLUMNS or not pd.api.types.is_numeric_dtype(table[first])
    if is_cell_id and first != label_key:
        cells = table.pop(first).astype(str).to_numpy()
    annotation_columns = [
        column for column in table.columns
        if column == label_key or not pd.api.types.is_numeric_dtype(table[column])
    ]
    obs = table[annotation_columns]
    values = table.drop(columns=annotation_columns)
    if values.shape[1] == 0:
        raise InputError(f"{path.name}: no numeric gene columns found.")
    return make_expression_data(values.to_numpy(), values.columns, cells, obs, path.name)


def annotation_columns(data: ExpressionData) -> list[str]:
    """Columns that can serve as labels (fewer distinct values than cells)."""
    return [
        str(column) for column in data.obs.columns
        if 1 < data.obs[column].nunique() < data.n_cells
    ]


def labels_of(data: ExpressionData, label_key: str) -> np.ndarray:
    """The labels of every cell as strings, ``""`` where unlabelled (missing values).

    Raises:
        InputError: ``label_key`` is not a column of the data.
    """
    if label_key not in data.obs.columns:
        available = ", ".join(map(str, data.obs.columns)) or "none"
        raise InputError(
            f"{data.name}: no label column {label_key!r}; annotation columns are: {available}."
        )
    column = data.obs[label_key]
    labels = column.astype(str).to_numpy()
    labels[column.isna().to_numpy()] = ""
    return labels
