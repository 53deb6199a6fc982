"""Scanned whole slides, read tile by tile.

Formats and pixel size, the smear's reading area, a resumable tile-by-tile analysis in a worker process,
and QuPath GeoJSON in and out.

The cells of each tile are found and classified by :mod:`napari_hematology.core.cells`; this package
only decides which tiles to read, in what order, and where the results go.
"""
