"""The white-cell classes: their names, the blast class and its default threshold, and their colours."""

from __future__ import annotations

BLAST = "blast"
IMMATURE_GRANULOCYTE = "immature_granulocyte"
ERYTHROBLAST = "erythroblast"
OTHER = "other"
NORMAL_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
CELL_CLASSES = (*NORMAL_TYPES, BLAST, IMMATURE_GRANULOCYTE, ERYTHROBLAST, OTHER)
DEFAULT_BLAST_THRESHOLD = 0.5
# Counted and shown, but not white cells of the differential: the blast percentage is of the others
# (nucleated red cells are reported per 100 white cells, not among them; `other` is no white cell).
NOT_IN_DIFFERENTIAL = (ERYTHROBLAST, OTHER)
# Bright colours that stand out against purple nuclei, pink red cells and the pale background of a
# Romanowsky-stained smear (CIEDE2000 distance >= 20 from each; tests/test_report.py checks it).
CLASS_COLOURS = {
    "neutrophil": (0, 229, 255),
    "lymphocyte": (0, 200, 0),
    "monocyte": (255, 230, 0),
    "eosinophil": (255, 140, 0),
    "basophil": (0, 0, 0),
    BLAST: (230, 0, 0),
}
OTHER_COLOUR = (128, 128, 0)
CLASS_COLOURS |= {IMMATURE_GRANULOCYTE: (255, 0, 255), ERYTHROBLAST: (0, 120, 120), OTHER: OTHER_COLOUR}
