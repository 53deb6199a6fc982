"""The reference Romanowsky stains in optical density, shared by stain normalisation and the classifier."""

from __future__ import annotations

import numpy as np

# Median over the 205 BCCD ``train`` fields (the data the segmentation thresholds were tuned on) of each
# field's Macenko estimate, rows haematoxylin-like then eosin-like, columns OD of red, green, blue;
# `python benchmarks/bench_segmentation.py --stain-reference`.
REFERENCE_STAINS = np.array([[0.453, 0.892, 0.0], [0.183, 0.469, 0.864]], dtype=np.float32)
