"""The white-cell classes: their names, the blast class and its default threshold, and their colours."""

from __future__ import annotations

BLAST = "blast"
CELL_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", BLAST)
DEFAULT_BLAST_THRESHOLD = 0.5
CLASS_COLOURS = {
    "neutrophil": (66, 135, 245),
    "lymphocyte": (46, 204, 113),
    "monocyte": (241, 196, 15),
    "eosinophil": (230, 126, 34),
    "basophil": (155, 89, 182),
    BLAST: (231, 76, 60),
}
OTHER_COLOUR = (200, 200, 200)
