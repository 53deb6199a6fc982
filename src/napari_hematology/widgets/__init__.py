"""Thin napari widgets over the core. Qt and napari are imported here, torch only inside functions."""
