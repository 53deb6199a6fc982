"""napari-hematology: blast detection, mutation prediction and label review for blood smears."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-hematology")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
