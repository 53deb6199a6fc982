"""The k-nearest-neighbour cell graph used by the graph-convolution head."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def knn_adjacency(latent: np.ndarray, k: int = 15):
    """Symmetric-normalised adjacency ``D^-1/2 (A + I) D^-1/2`` of the kNN graph of ``latent`` rows.

    Args:
        latent: (cells, features) array.
        k: Neighbours per cell (fewer when there are fewer cells).

    Returns:
        A sparse COO ``torch`` tensor of shape (cells, cells).
    """
    import torch
    from sklearn.neighbors import NearestNeighbors

    n_cells = len(latent)
    neighbours = min(k, n_cells - 1)
    if neighbours > 0:
        graph = NearestNeighbors(n_neighbors=neighbours).fit(latent).kneighbors_graph(mode="connectivity")
        graph = ((graph + graph.T) > 0).astype(np.float32)
    else:
        graph = sparse.csr_matrix((n_cells, n_cells), dtype=np.float32)
    graph = sparse.coo_matrix(graph + sparse.identity(n_cells, dtype=np.float32, format="csr"))
    scale = 1.0 / np.sqrt(np.asarray(graph.sum(axis=1)).ravel())
    values = graph.data * scale[graph.row] * scale[graph.col]
    indices = torch.from_numpy(np.vstack([graph.row, graph.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(values.astype(np.float32)),
                                   (n_cells, n_cells), check_invariants=False).coalesce()
