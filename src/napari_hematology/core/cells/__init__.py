"""White cells: segmentation, single-cell crops, the cell classifier and the blast-detection pipeline."""
