"""Reading smear images (small or whole-slide, lazily) and writing label images and cell tables.

This module is the one place that knows which files are images: plain pictures (JPEG, PNG, BMP) and every
whole-slide format of :mod:`napari_hematology.core.whole_slide.formats` (TIFF, OME-TIFF, SVS, NDPI, SCN, BIF,
MRXS, DICOM...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError
from napari_hematology.core.whole_slide.formats import (
    SLIDE_SUFFIXES,
    TIFF_READ_ERRORS,
    open_slide,
    refuse_unreadable,
    unreadable_file_error,
)

PLAIN_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}
IMAGE_SUFFIXES = SLIDE_SUFFIXES + tuple(PLAIN_FORMATS)
MIN_SIDE = 16
# What Pillow raises on a damaged picture, found by truncating, overwriting and flipping bytes of JPEG,
# PNG and BMP files: OSError (UnidentifiedImageError, "image file is truncated", "broken data stream"),
# SyntaxError (a broken PNG chunk) and ValueError. A picture too large for it is a DecompressionBombError.
PILLOW_READ_ERRORS = (OSError, SyntaxError, ValueError)
# pandas' parser errors (EmptyDataError, ParserError) and undecodable bytes are ValueErrors.
CSV_READ_ERRORS = (ValueError, OSError)


@dataclass
class SmearImage:
    """An opened smear image.

    Attributes:
        levels: Image pyramid, full resolution first. Numpy arrays for small files, dask arrays for large
            or pyramidal slides (read lazily, tile by tile).
        path: Where it was read from.
        notes: Conversions made on the way that the user should know about.
        format_name: The file format, in words (``"Aperio SVS"``, ``"JPEG"``).
        reader: The library that reads the pixels (``"tifffile"``, ``"openslide"``, ``"Pillow"``).
        pixel_size_um: Width of a full-resolution pixel in micrometres; None when the file does not say.
        pixel_size_source: Where ``pixel_size_um`` was read (``"Aperio MPP"``, ``"OME PhysicalSizeX"``,
            ``"TIFF resolution tags"``, ``"openslide.mpp-x"``), None when it was not.

    """

    levels: list
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    format_name: str = ""
    reader: str = ""
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None

    @property
    def data(self):
        """The full-resolution level."""
        return self.levels[0]

    @property
    def is_multiscale(self) -> bool:
        """Whether more than one resolution level is available."""
        return len(self.levels) > 1


def is_image_path(path: str | Path) -> bool:
    """Whether the file name has a smear-image suffix this package reads."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def list_files(
    paths: list[str | Path] | str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, what: str = "images"
) -> list[Path]:
    """Expand files and folders into a sorted list of files with one of ``suffixes``.

    Args:
        paths: Files and/or folders (searched recursively).
        suffixes: Lower-case file suffixes to keep from folders; named files are kept as they are.
        what: What the files are, for the error message.

    Returns:
        The files, folders expanded in sorted order.

    Raises:
        InputError: A path does not exist, or no matching file was found.

    """
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder.")
    if not found:
        raise InputError(f"No {what} ({', '.join(suffixes)}) found in {', '.join(map(str, paths))}.")
    return found


def list_images(paths: list[str | Path] | str | Path) -> list[Path]:
    """Expand image files and folders into a sorted list of smear images (see :func:`list_files`).

    A DICOM slide is a folder of ``.dcm`` files (one per level); only the first of each folder is listed.
    """
    files = list_files(paths, IMAGE_SUFFIXES, "images")
    dicom_folders: set[Path] = set()
    kept = []
    for path in files:
        if path.suffix.lower() == ".dcm":
            if path.parent in dicom_folders:
                continue
            dicom_folders.add(path.parent)
        kept.append(path)
    return kept


def read_image(path: str | Path, lazy: bool | None = None, reader: str | None = None) -> SmearImage:
    """Open a smear image: a whole slide of any known format (lazily, multiscale), or a JPEG, PNG or BMP.

    Args:
        path: Image file.
        lazy: Force (True) or forbid (False) lazy dask reading of plain TIFFs; None decides by size.
            Pyramidal and OpenSlide slides are always lazy.
        reader: Force ``"tifffile"`` or ``"openslide"`` for slides; None picks the reader by format.

    Returns:
        The opened image with its pixel size when the file records one; not yet checked for colour or
        bit depth (see :func:`to_rgb8`).

    Raises:
        InputError: The file is missing, of an unsupported format, corrupt or truncated.

    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    refuse_unreadable(path)
    if not is_image_path(path):
        raise InputError(
            f"{path.name}: unsupported format '{path.suffix}'. Use one of {', '.join(IMAGE_SUFFIXES)}."
        )
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return _read_slide(path, lazy, reader)
    plain = PLAIN_FORMATS[path.suffix.lower()]
    return SmearImage(levels=[_read_plain(path)], path=path, format_name=plain, reader="Pillow")


def _read_slide(path: Path, lazy: bool | None, reader: str | None) -> SmearImage:
    slide = open_slide(path, lazy, reader)
    notes = [] if slide.pixel_size_um else [f"{path.name}: the file records no pixel size."]
    return SmearImage(
        levels=slide.levels,
        path=path,
        notes=notes,
        format_name=slide.format_name,
        reader=slide.reader,
        pixel_size_um=slide.pixel_size_um,
        pixel_size_source=slide.pixel_size_source,
    )


def _read_plain(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
            return np.asarray(image)
    except Image.DecompressionBombError as error:
        raise InputError(
            f"{path.name}: {error} Pillow opens no picture this large; save the field as a TIFF, which is "
            "read tile by tile."
        ) from error
    except PILLOW_READ_ERRORS as error:
        raise unreadable_file_error(path, error) from error


def read_ahead(image, windows: list[tuple[slice, slice]]) -> Iterator[np.ndarray]:
    """The image's windows as numpy arrays, each next one read on a background thread meanwhile.

    Reading and decoding a slide's tiles (dask, tifffile, zlib, JPEG) mostly releases Python's lock, so
    it overlaps the work on the window before.

    Args:
        image: A numpy, dask or zarr array (a slide level).
        windows: ``(rows, cols)`` slices, in the order wanted.

    Yields:
        Each window's pixels.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="tile-reader") as reader:
        pending = reader.submit(np.asarray, image[windows[0]]) if windows else None
        for index in range(len(windows)):
            tile = pending.result()
            if index + 1 < len(windows):
                pending = reader.submit(np.asarray, image[windows[index + 1]])
            yield tile


def to_rgb8(image: np.ndarray, name: str = "image") -> tuple[np.ndarray, list[str]]:
    """Check a smear image and convert it to 8-bit RGB (Y, X, 3).

    Alpha channels are dropped and 16-bit or float images are rescaled; grayscale images, images that are
    too small and blank images are refused because stain colour is what the analysis relies on.

    Args:
        image: Array of shape (Y, X), (Y, X, 3) or (Y, X, 4).
        name: Name used in messages.

    Returns:
        The RGB uint8 image and a list of notes describing conversions made.

    Raises:
        InputError: The image cannot be analysed; the message says why and what to do.

    """
    array = np.asarray(image)
    notes: list[str] = []
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
        notes.append(f"{name}: channels moved last (was channels-first).")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
        raise InputError(
            f"{name} is grayscale; blast detection needs the colour (RGB) image of a Romanowsky-stained "
            "smear. Open the original colour file."
        )
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(
            f"{name} has shape {array.shape}; expected a colour image (height, width, 3). "
            "For a stack or time series, pick one plane first."
        )
    if min(array.shape[:2]) < MIN_SIDE:
        raise InputError(
            f"{name} is only {array.shape[1]}x{array.shape[0]} pixels; a smear field must be at least "
            f"{MIN_SIDE}x{MIN_SIDE}."
        )
    if array.shape[-1] == 4:
        array = array[..., :3]
        notes.append(f"{name}: alpha channel dropped.")
    if array.dtype != np.uint8:
        array = _rescale_to_uint8(array)
        notes.append(f"{name}: {image.dtype} intensities rescaled to 8 bits.")
    if int(array.max()) == int(array.min()):
        raise InputError(f"{name} is blank (every pixel has the same value); there is nothing to analyse.")
    return np.ascontiguousarray(array), notes


def _rescale_to_uint8(array: np.ndarray) -> np.ndarray:
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise InputError("The image contains NaN or infinite values; it cannot be analysed.")
    if np.issubdtype(array.dtype, np.integer):
        top = float(np.iinfo(array.dtype).max) if values.max() > 255 else 255.0
        if array.dtype == np.uint16 and values.max() <= 4095:
            top = 4095.0  # 12-bit cameras store into 16-bit containers
    else:
        top = 1.0 if values.max() <= 1.0 else float(values.max())
    return np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write an integer label image as a compressed TIFF (0 = background).

    Args:
        path: Destination ``.tif`` file; parent folders are created.
        labels: Integer array.

    Returns:
        The written path.

    """
    import tifffile

    path = Path(path)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"Labels must be integers, got {labels.dtype}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, labels.astype(_smallest_label_dtype(labels)), compression="zlib")
    return path


def _smallest_label_dtype(labels: np.ndarray) -> type:
    top = int(labels.max()) if labels.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max and (labels.size == 0 or labels.min() >= 0):
            return dtype
    return np.int64


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image written by :func:`write_labels` (or any integer TIFF)."""
    import tifffile

    try:
        labels = tifffile.imread(path)
    except TIFF_READ_ERRORS as error:
        raise InputError(f"{Path(path).name}: cannot read label image ({error}).") from error
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{Path(path).name}: a label image must hold integers, found {labels.dtype}.")
    return labels


def write_table(path: str | Path, table) -> Path:
    """Write a per-cell table (pandas DataFrame or dict of columns) as CSV.

    Args:
        path: Destination ``.csv`` file; parent folders are created.
        table: DataFrame or mapping of column name to values.

    Returns:
        The written path.

    """
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(path, index=False)
    return path


def read_table(path: str | Path, required: list[str] | tuple[str, ...] = ()):
    """Read a CSV table and check that it has the required columns.

    Args:
        path: CSV file.
        required: Column names that must be present.

    Returns:
        A pandas DataFrame.

    Raises:
        InputError: The file is missing, unreadable, or lacks required columns.

    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        table = pd.read_csv(path)
    except CSV_READ_ERRORS as error:
        raise InputError(f"{path.name}: cannot be read as CSV ({error}).") from error
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise InputError(
            f"{path.name} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, table.columns))}."
        )
    return table
