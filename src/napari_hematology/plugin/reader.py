"""npe2 reader for smear images and whole slides: every format of :mod:`napari_hematology.core.io`.

Whole slides open as multiscale image layers (one dask array per pyramid level, read tile by tile); the
pixel size read from the file, and where it came from, are in the layer's ``metadata``. Layers stay in
full-resolution pixel coordinates, as QuPath's GeoJSON and the cell tables are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_hematology.core.io import is_image_path, read_image

LayerData = tuple


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for smear images, or None if any path is not one this plugin reads."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_image_path(p) and Path(p).is_file() for p in paths):
        return None
    return read_smear_images


def read_smear_images(path: str | list[str]) -> list[LayerData]:
    """Read one or more smear images or slides as napari image layers.

    Raises:
        InputError: A file is corrupt, unreadable or of a format no installed reader opens; napari shows
            the message and stays usable.

    """
    paths = [path] if isinstance(path, str) else list(path)
    return [_layer_data(Path(p)) for p in paths]


def _layer_data(path: Path) -> LayerData:
    image = read_image(path)
    shape = image.data.shape
    rgb = len(shape) == 3 and shape[-1] in (3, 4)
    metadata = {
        "path": str(path),
        "notes": image.notes,
        "format": image.format_name,
        "reader": image.reader,
        "pixel_size_um": image.pixel_size_um,
        "pixel_size_source": image.pixel_size_source,
    }
    kwargs = {"name": path.stem, "rgb": rgb, "metadata": metadata}
    if image.is_multiscale:
        return image.levels, {**kwargs, "multiscale": True}, "image"
    return image.data, kwargs, "image"
