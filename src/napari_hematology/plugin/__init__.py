"""npe2 contributions: readers, writers and sample data. Thin adapters over :mod:`napari_hematology.core`."""
