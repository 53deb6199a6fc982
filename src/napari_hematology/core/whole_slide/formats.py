"""Whole-slide formats: which scanner files open with which reader, lazily, with their pixel size.

TIFF-based slides (Aperio SVS, Hamamatsu NDPI, Leica SCN, Roche BIF, OME-TIFF, generic pyramidal TIFF) are
read with tifffile as dask arrays, one array per pyramid level. Formats tifffile cannot read (3DHistech
MRXS, DICOM, Hamamatsu VMS) and TIFF slides whose tiles tifffile cannot decode go through OpenSlide
(``openslide-python`` with the library from the ``openslide-bin`` wheel). :mod:`napari_hematology.core.io`
is the one entry point; this module only opens slides.
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hematology.core.errors import InputError

TIFF_SLIDE_FORMATS = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".svs": "Aperio SVS",
    ".ndpi": "Hamamatsu NDPI",
    ".scn": "Leica SCN",
    ".bif": "Roche Ventana BIF",
}
OPENSLIDE_FORMATS = {
    ".mrxs": "3DHistech MRXS",
    ".dcm": "DICOM whole-slide",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".svslide": "Sakura SVSlide",
}
UNREADABLE_FORMATS = {
    ".czi": "Zeiss CZI",
    ".vsi": "Olympus VSI",
    ".isyntax": "Philips iSyntax",
    ".lif": "Leica LIF",
}
SLIDE_SUFFIXES = tuple(TIFF_SLIDE_FORMATS) + tuple(OPENSLIDE_FORMATS)
OPENSLIDE_INSTALL = "pip install openslide-python openslide-bin"
OPENSLIDE_CHUNK = 1024
DASK_CHUNK = 1024
LAZY_THRESHOLD_BYTES = 256 * 2**20
PLAUSIBLE_PIXEL_UM = (0.01, 20.0)
LENGTH_UNITS_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
TIFF_UNIT_UM = {2: 25_400.0, 3: 10_000.0}  # ResolutionUnit: inch, centimetre
APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.]+)")
# What tifffile (with zarr and imagecodecs under it) raises on a damaged file, found by truncating,
# overwriting and flipping bytes of plain, tiled (JPEG, deflate) and pyramidal TIFFs: its TiffFileError
# and other ValueErrors, NotImplementedError for an encoding it cannot decode, the codecs' errors
# (RuntimeError), MemoryError when a damaged size asks for terabytes, and TypeError, IndexError, KeyError,
# ZeroDivisionError and struct.error from garbled tags; OSError from the file system. Only reads are
# guarded with it.
TIFF_READ_ERRORS = (
    ValueError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
    TypeError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    struct.error,
    OSError,
)
# Decoding a tile: a compression or sample format tifffile cannot decode here, or a codec that fails.
TILE_DECODE_ERRORS = (ValueError, NotImplementedError, RuntimeError)


@dataclass
class OpenedSlide:
    """A slide opened lazily.

    Attributes:
        levels: Dask arrays (Y, X, C), full resolution first.
        format_name: The format, in words (``"Aperio SVS"``).
        reader: ``"tifffile"`` or ``"openslide"``.
        pixel_size_um: Width of a full-resolution pixel in micrometres, None when the file does not say.
        pixel_size_source: Where the pixel size was read (``"Aperio MPP"``, ``"OME PhysicalSizeX"``...).

    """

    levels: list
    format_name: str
    reader: str
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None


def format_name(path: Path) -> str:
    """The slide format of a file, in words, from its suffix."""
    suffix = path.suffix.lower()
    if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return "OME-TIFF"
    known = TIFF_SLIDE_FORMATS | OPENSLIDE_FORMATS | UNREADABLE_FORMATS
    return known.get(suffix, f"'{suffix}'")


def refuse_unreadable(path: Path) -> None:
    """Raise the one message for a slide format that neither tifffile nor OpenSlide reads.

    Raises:
        InputError: The suffix names such a format.

    """
    name = UNREADABLE_FORMATS.get(path.suffix.lower())
    if name:
        raise InputError(
            f"{path.name}: {name} slides cannot be read by tifffile or OpenSlide. Convert the slide to "
            "OME-TIFF (QuPath: File > Export images > OME TIFF, or Bio-Formats' bfconvert) and open that."
        )


def unreadable_file_error(path: Path, error: BaseException) -> InputError:
    """The one message for a file whose reader fails on it: corrupt, truncated or not really an image."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
    return InputError(
        f"{path.name}: cannot be read ({type(error).__name__}: {detail}). "
        "The file is corrupt, truncated or not really an image; re-export it from the scanner software."
    )


def open_slide(path: Path, lazy: bool | None = None, reader: str | None = None) -> OpenedSlide:
    """Open a whole-slide file lazily with the reader that can read it.

    Args:
        path: Slide file.
        lazy: For plain TIFFs, force (True) or forbid (False) lazy reading; None decides by size.
        reader: ``"tifffile"`` or ``"openslide"`` to force one; None picks tifffile for TIFF-based
            formats (OpenSlide if tifffile cannot decode the tiles) and OpenSlide for the others.

    Returns:
        The opened slide.

    Raises:
        InputError: No installed reader can open it (the message names the format and what is needed),
            or the file is damaged.

    """
    if reader == "openslide" or (reader is None and path.suffix.lower() in OPENSLIDE_FORMATS):
        return _open_openslide(path)
    try:
        return _open_tifffile(path, lazy)
    except _UndecodableTiles as error:
        if reader == "tifffile" or not _openslide_available():
            raise InputError(
                f"{path.name}: the tiles of this {format_name(path)} slide use a compression tifffile "
                f"cannot decode here ({error}). Install 'imagecodecs' or OpenSlide ({OPENSLIDE_INSTALL})."
            ) from error
        return _open_openslide(path)


class _UndecodableTiles(Exception):
    """tifffile parsed the file but cannot decode its pixels."""


def _open_tifffile(path: Path, lazy: bool | None) -> OpenedSlide:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path.name}: the TIFF holds no image.")
            index = _main_series(tif)
            series = tif.series[index]
            nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
            pixel_size, source = tiff_pixel_size(tif, series)
            if lazy is None:
                lazy = len(series.levels) > 1 or nbytes > LAZY_THRESHOLD_BYTES
            name = _tiff_format_name(tif, path)
            if not lazy:
                return OpenedSlide([series.asarray()], name, "tifffile", pixel_size, source)
        levels = _tifffile_levels(path, index)
    except InputError:
        raise
    except TIFF_READ_ERRORS as error:
        raise unreadable_file_error(path, error) from error
    try:
        np.asarray(levels[-1][:1, :1])
    except TILE_DECODE_ERRORS as error:
        raise _UndecodableTiles(str(error).strip().splitlines()[0] if str(error).strip() else "") from error
    except TIFF_READ_ERRORS as error:
        raise unreadable_file_error(path, error) from error
    return OpenedSlide(levels, name, "tifffile", pixel_size, source)


def _main_series(tif) -> int:
    """Index of the series with the largest full-resolution plane (SCN files put the overview first)."""
    areas = [int(np.prod(series.shape[:2])) if series.shape else 0 for series in tif.series]
    return int(np.argmax(areas))


def _tifffile_levels(path: Path, series: int) -> list:
    import dask.array as da
    import tifffile
    import zarr

    group = zarr.open(tifffile.imread(path, aszarr=True, series=series), mode="r")
    arrays = [group] if isinstance(group, zarr.Array) else [group[key] for key in group.array_keys()]
    levels = [da.from_zarr(array, chunks=_dask_chunks(array)) for array in arrays]
    if any(array.ndim < 2 for array in levels):
        raise InputError(f"{path.name}: a level of the slide is not an image (shape {levels[0].shape}).")
    return sorted(levels, key=lambda array: -array.shape[0])


def _dask_chunks(array) -> tuple[int, ...]:
    """Dask chunks of about ``DASK_CHUNK`` pixels a side, whole TIFF tiles each (fewer, larger reads)."""
    return tuple(
        size * max(1, round(DASK_CHUNK / size)) if axis < 2 else size
        for axis, size in enumerate(array.chunks)
    )


def _tiff_format_name(tif, path: Path) -> str:
    for flag, name in (("is_ome", "OME-TIFF"), ("is_svs", "Aperio SVS"), ("is_ndpi", "Hamamatsu NDPI")):
        if getattr(tif, flag, False):
            return name
    for flag, name in (("is_scn", "Leica SCN"), ("is_bif", "Roche Ventana BIF")):
        if getattr(tif.pages.first, flag, False):
            return name
    return format_name(path)


def tiff_pixel_size(tif, series) -> tuple[float | None, str | None]:
    """Pixel width (µm) of a TIFF slide's full-resolution level, and where it was read.

    Looks, in order, at OME ``PhysicalSizeX``, the Aperio ``MPP`` of the ImageDescription and the TIFF
    ``XResolution``/``ResolutionUnit`` tags (used only when they give a microscope-like size, so the 72 dpi
    of a photo editor is ignored).

    Args:
        tif: An open ``tifffile.TiffFile``.
        series: Its series holding the slide.

    Returns:
        ``(micrometres, source)``, or ``(None, None)`` when the file does not say.

    """
    page = series.pages[0] if series.pages else tif.pages.first
    candidates = [
        (_ome_pixel_size(tif.ome_metadata) if tif.is_ome else None, "OME PhysicalSizeX"),
        (_aperio_pixel_size(page.description) if tif.is_svs else None, "Aperio MPP"),
        (_resolution_pixel_size(page), "TIFF resolution tags"),
    ]
    for size, source in candidates:
        if size is not None and PLAUSIBLE_PIXEL_UM[0] <= size <= PLAUSIBLE_PIXEL_UM[1]:
            return size, source
    return None, None


def _ome_pixel_size(xml: str | None) -> float | None:
    if not xml:
        return None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:  # damaged metadata: the pixels may still be fine
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            return _number(element.attrib["PhysicalSizeX"]) * LENGTH_UNITS_UM.get(unit, float("nan"))
    return None


def _number(text: str) -> float:
    """``text`` as a number; NaN (never a plausible pixel size) when it is not one."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _aperio_pixel_size(description: str) -> float | None:
    match = APERIO_MPP.search(description or "")
    return _number(match.group(1)) if match else None


def _resolution_pixel_size(page) -> float | None:
    resolution = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    unit_um = TIFF_UNIT_UM.get(unit.value if unit is not None else 2)
    if resolution is None or unit_um is None or len(resolution.value) != 2:
        return None
    numerator, denominator = resolution.value
    return unit_um * denominator / numerator if numerator else None


def _openslide_available() -> bool:
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _open_openslide(path: Path) -> OpenedSlide:
    name = format_name(path)
    if not _openslide_available():
        raise InputError(
            f"{path.name}: {name} slides are read through OpenSlide, which is not installed. "
            f"Install it with '{OPENSLIDE_INSTALL}'."
        )
    import dask.array as da
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as error:
        raise InputError(
            f"{path.name}: OpenSlide cannot open this {name} slide ({error}). Check that the whole slide "
            "was copied (MRXS slides need their folder of .dat files next to them, DICOM slides every "
            "file of the series in one folder)."
        ) from error
    levels = [
        da.from_array(_OpenSlideLevel(slide, level), chunks=(OPENSLIDE_CHUNK, OPENSLIDE_CHUNK, 3), lock=False)
        for level in range(slide.level_count)
    ]
    mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    size = float(mpp) if mpp else None
    return OpenedSlide(
        levels,
        name,
        "openslide",
        size,
        "openslide.mpp-x" if size else None,
    )


class _OpenSlideLevel:
    """One pyramid level of an OpenSlide slide as an array-like (Y, X, 3) for ``dask.array.from_array``.

    Unscanned areas (transparent in OpenSlide) read as white glass.
    """

    def __init__(self, slide, level: int) -> None:
        self._slide = slide
        self._level = level
        self._downsample = slide.level_downsamples[level]
        width, height = slide.level_dimensions[level]
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1, _), (x0, x1, _) = (key[axis].indices(self.shape[axis]) for axis in (0, 1))
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[:, :, key[2]]
        origin = (round(x0 * self._downsample), round(y0 * self._downsample))
        rgba = np.asarray(self._slide.read_region(origin, self._level, (x1 - x0, y1 - y0)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255
        return rgb[:, :, key[2]]
