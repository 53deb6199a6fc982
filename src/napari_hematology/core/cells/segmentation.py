"""White-cell segmentation of Romanowsky-stained smear fields and whole slides.

The method is classical and stain-aware, so that it transfers between labs without retraining:

1. The background white point of the image is estimated and every pixel converted to optical density
   (OD) per channel, which removes illumination differences.
2. Nuclei of white cells absorb red light strongly but let blue light through (purple); red cells do the
   opposite and the background absorbs little. ``OD_red - OD_blue`` is therefore a stain-aware nucleus
   score. Its threshold adapts to each field: at least the configured one, and above the red cells of
   that field (Otsu's split of the stained pixels' scores), so that a stain that makes red cells purple
   does not turn them into white cells. Small objects (platelets) are dropped and the lobes of one
   nucleus are grouped by a closing.
3. Each nucleus group seeds a watershed on the stained (non-background, non-red-cell) area within a bounded
   distance, which gives the whole cell and splits touching cells.

Optionally (``SegmentationConfig.stain_normalisation``, off: measured not to help on other labs' crops) each
field is first re-expressed in reference stains, see :mod:`~napari_hematology.core.cells.stain`.

Segmentation works at one physical scale: the lengths and areas of :class:`SegmentationConfig` hold at
its ``pixel_size_um`` (that of the BCCD fields it was tuned on). An image of another pixel size is resized
to that scale, segmented, and its labels mapped back to the image's own pixels.

Detection runs on an image downsampled by ``detect_scale`` and nuclei are refined at reference resolution in
each cell's box, which keeps the speed well above 10 megapixels per second. Large images (numpy or lazily
read dask arrays) are processed in overlapping tiles; each cell is owned by the tile whose core holds its
centroid, so memory stays bounded and no cell is cut or counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pandas as pd
from scipy import ndimage

from napari_hematology.core.cells.stain import normalise_stain, od_tables
from napari_hematology.core.errors import InputError
from napari_hematology.core.io import read_ahead, to_rgb8
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel, no_progress

CELL_COLUMNS = [
    "cell_id",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "area",
    "nucleus_area",
    "nc_ratio",
]
WHITE_PERCENTILE = 99.0
WHITE_SAMPLE_PIXELS = 2_000_000
# Pixel size of the BCCD fields, measured by the red-cell ruler (core.cells.magnification) over the BCCD
# train split: `python benchmarks/bench_segmentation.py --calibrate`.
REFERENCE_PIXEL_SIZE_UM = 0.07225
# Within this relative difference from the reference pixel size an image is segmented as it is.
ZOOM_TOLERANCE = 0.05
MIN_STAINED_PIXELS = 100  # fewer stained pixels (downsampled) leave the nucleus threshold as configured


@dataclass
class SegmentationConfig:
    """Parameters of white-cell segmentation; the defaults were tuned on the BCCD ``train`` split.

    Lengths and areas are in pixels of ``pixel_size_um``; images of another pixel size are resized to it.

    Attributes:
        nucleus_threshold: Minimum ``OD_red - OD_blue`` of nucleus pixels.
        adaptive_threshold: Raise the nucleus threshold of each field (or tile) to Otsu's split of its
            stained pixels' scores when that is higher (stains where red cells look purple).
        cytoplasm_threshold: Minimum ``OD_red - OD_blue`` of cytoplasm pixels (red cells are below).
        background_od: Maximum summed optical density of background pixels.
        min_nucleus_area: Smallest nucleus (all lobes together), full-resolution pixels; smaller stained
            objects are platelets or debris.
        lobe_gap: Gap (pixels) bridged between lobes of one nucleus.
        cell_margin: How far (pixels) the cell may extend beyond its nucleus.
        detect_scale: Downsampling factor for detection.
        tile_size: Side of the tiles (pixels) that large images are cut into.
        tile_overlap: Overlap between tiles (pixels); must exceed the largest cell diameter.
        pixel_size_um: Pixel size (micrometres) at which the settings above hold.
        stain_normalisation: Re-express each field (or tile) in the reference stains of
            :mod:`~napari_hematology.core.cells.stain` before segmenting it.

    """

    nucleus_threshold: float = 0.14
    adaptive_threshold: bool = True
    cytoplasm_threshold: float = -0.10
    background_od: float = 0.30
    min_nucleus_area: int = 3000
    lobe_gap: int = 28
    cell_margin: int = 30
    detect_scale: int = 4
    tile_size: int = 2048
    tile_overlap: int = 256
    pixel_size_um: float = REFERENCE_PIXEL_SIZE_UM
    stain_normalisation: bool = False

    def __post_init__(self) -> None:
        if self.detect_scale < 1 or self.tile_size < 64 or not 0 <= self.tile_overlap < self.tile_size // 2:
            raise InputError(
                "Segmentation settings out of range: detect_scale >= 1, tile_size >= 64 and "
                "0 <= tile_overlap < tile_size / 2 are required."
            )

    def zoom(self, pixel_size_um: float | None) -> float:
        """How much an image of ``pixel_size_um`` must be enlarged to reach this config's scale.

        Args:
            pixel_size_um: The image's pixel size; None means the config's own (zoom 1).

        Returns:
            The resize factor, 1.0 when within :data:`ZOOM_TOLERANCE` of the config's pixel size.

        """
        if pixel_size_um is None:
            return 1.0
        zoom = pixel_size_um / self.pixel_size_um
        return 1.0 if abs(zoom - 1.0) <= ZOOM_TOLERANCE else zoom

    def tile_side(self, pixel_size_um: float | None) -> int:
        """Tile side in pixels of an image of ``pixel_size_um``: ``tile_size`` at this config's scale."""
        return round(self.tile_size / self.zoom(pixel_size_um))


@dataclass
class Segmentation:
    """Result of segmenting one image.

    Attributes:
        labels: Integer cell labels (0 = background), same height and width as the image.
        nuclei: Boolean nucleus mask.
        cells: One row per cell with :data:`CELL_COLUMNS`.

    """

    labels: np.ndarray
    nuclei: np.ndarray
    cells: pd.DataFrame


def estimate_white(image) -> np.ndarray:
    """Estimate the background white point (per channel) of an RGB image, numpy or dask.

    Args:
        image: (Y, X, 3) uint8 array; large arrays are subsampled with a stride.

    Returns:
        Three floats, the bright-background level of red, green and blue.

    """
    height, width = image.shape[:2]
    stride = max(1, int(np.sqrt(height * width / WHITE_SAMPLE_PIXELS)))
    sample = np.asarray(image[::stride, ::stride, :3]).reshape(-1, 3)
    white = np.percentile(sample, WHITE_PERCENTILE, axis=0)
    return np.maximum(white.astype(np.float32), 32.0)


def stain_maps(rgb: np.ndarray, tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus score (``OD_red - OD_blue``) and total optical density of an RGB uint8 image."""
    red = tables[0][rgb[..., 0]]
    blue = tables[2][rgb[..., 2]]
    score = red - blue
    total = red + blue + tables[1][rgb[..., 1]]
    return score, total


def downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsampling of an RGB uint8 image (edges cropped to a multiple of ``factor``)."""
    if factor == 1:
        return rgb
    height, width = rgb.shape[0] // factor, rgb.shape[1] // factor
    total = np.zeros((height, width, 3), dtype=np.uint16)
    for dy in range(factor):
        for dx in range(factor):
            total += rgb[dy : height * factor : factor, dx : width * factor : factor]
    return (total // factor**2).astype(np.uint8)


def field_nucleus_threshold(small: np.ndarray, tables: np.ndarray, config: SegmentationConfig) -> float:
    """The nucleus threshold of one field: the configured one, raised above this field's red cells.

    Args:
        small: The downsampled RGB field.
        tables: Its optical-density tables.
        config: Segmentation parameters (``nucleus_threshold``, ``background_od``, ``adaptive_threshold``).

    Returns:
        ``max(config.nucleus_threshold, Otsu's threshold of the stained pixels' nucleus scores)``, or the
        configured threshold when adaptation is off or too few pixels are stained.

    """
    if not config.adaptive_threshold:
        return config.nucleus_threshold
    score, total = stain_maps(small, tables)
    stained = score[total > config.background_od]
    if stained.size < MIN_STAINED_PIXELS or stained.min() == stained.max():
        return config.nucleus_threshold
    from skimage.filters import threshold_otsu

    return max(config.nucleus_threshold, float(threshold_otsu(stained)))


def _detect_cells(small: np.ndarray, tables: np.ndarray, config: SegmentationConfig) -> np.ndarray:
    """Label whole cells on the downsampled image: nucleus groups seed a bounded watershed."""
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    scale = config.detect_scale
    score, total = stain_maps(small, tables)
    nuclei = ndimage.binary_opening(score > config.nucleus_threshold)
    groups = _close(nuclei, max(1, config.lobe_gap // scale)) | nuclei
    groups = ndimage.binary_fill_holes(groups)
    groups = remove_small_objects(groups, max_size=max(1, config.min_nucleus_area // scale**2))
    markers, count = ndimage.label(groups)
    if count == 0:
        return markers
    stained = (total > config.background_od) & (score > config.cytoplasm_threshold)
    margin = max(1, config.cell_margin // scale)
    distance = ndimage.distance_transform_edt(markers == 0)
    cells = watershed(distance, markers, mask=(stained & (distance <= margin)) | (markers > 0))
    return _smooth_cells(cells, margin)


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing with a disk, through distance transforms (cost independent of the radius)."""
    if not mask.any():
        return mask
    dilated = ndimage.distance_transform_edt(~mask) <= radius
    return ndimage.distance_transform_edt(dilated) > radius


def _smooth_cells(cells: np.ndarray, hole_size: int) -> np.ndarray:
    """Remove one-pixel spurs and fill holes of the labelled cells; holes take the nearest cell's label."""
    from skimage.segmentation import expand_labels

    opened = ndimage.binary_opening(cells > 0)
    filled = ndimage.binary_fill_holes(opened)
    smoothed = expand_labels(np.where(opened, cells, 0), distance=hole_size)
    smoothed[~filled] = 0
    return smoothed


def _upsample(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of labels to ``shape`` (edges padded by repetition)."""
    if factor == 1:
        return labels
    big = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)
    pad = ((0, shape[0] - big.shape[0]), (0, shape[1] - big.shape[1]))
    return np.pad(big, pad, mode="edge")


def _refine_nuclei(
    rgb: np.ndarray, cells: np.ndarray, tables: np.ndarray, config: SegmentationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Refine nuclei at full resolution inside each cell; drop cells whose nucleus is too small.

    Returns:
        The kept cells (original label values) and the nucleus mask.

    """
    nuclei = np.zeros(cells.shape, dtype=bool)
    kept = np.zeros_like(cells)
    for index, window in enumerate(ndimage.find_objects(cells), start=1):
        if window is None:
            continue
        cell = cells[window] == index
        score, _ = stain_maps(rgb[window], tables)
        nucleus = cell & (score > config.nucleus_threshold)
        if nucleus.sum() < config.min_nucleus_area // 2:
            continue
        kept[window][cell] = index
        nuclei[window] |= nucleus
    return kept, nuclei


def _measure(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """Number the cells 1..n in scan order and measure each one.

    Returns:
        The relabelled cells and the cell table.

    """
    relabelled = np.zeros_like(cells)
    rows = []
    for index, window in enumerate(ndimage.find_objects(cells), start=1):
        if window is None:
            continue
        cell = cells[window] == index
        cell_id = len(rows) + 1
        relabelled[window][cell] = cell_id
        area = int(cell.sum())
        nucleus_area = int((nuclei[window] & cell).sum())
        ys, xs = np.nonzero(cell)
        rows.append(
            {
                "cell_id": cell_id,
                "centroid_y": float(ys.mean() + window[0].start),
                "centroid_x": float(xs.mean() + window[1].start),
                "bbox_y0": int(ys.min() + window[0].start),
                "bbox_x0": int(xs.min() + window[1].start),
                "bbox_y1": int(ys.max() + window[0].start + 1),
                "bbox_x1": int(xs.max() + window[1].start + 1),
                "area": area,
                "nucleus_area": nucleus_area,
                "nc_ratio": nucleus_area / max(area - nucleus_area, 1),
            }
        )
    return relabelled, pd.DataFrame(rows, columns=CELL_COLUMNS)


def segment_field(
    rgb: np.ndarray,
    config: SegmentationConfig | None = None,
    white: np.ndarray | None = None,
    pixel_size_um: float | None = None,
) -> Segmentation:
    """Segment white cells in one in-memory RGB field (or tile).

    Args:
        rgb: (Y, X, 3) uint8 image.
        config: Segmentation parameters; defaults if None.
        white: Background white point; estimated from ``rgb`` if None (pass the slide's value for tiles).
        pixel_size_um: The field's pixel size; None when it is the config's own. Another pixel size is
            resized to the config's scale for segmentation and the result mapped back to ``rgb``'s pixels.

    Returns:
        Cell labels, nucleus mask and the per-cell table, in ``rgb``'s pixels.

    """
    config = config or SegmentationConfig()
    zoom = config.zoom(pixel_size_um)
    work = rgb if zoom == 1.0 else resize_rgb(rgb, zoom)
    small = downsample(work, config.detect_scale)
    white = estimate_white(small) if white is None else np.asarray(white, dtype=np.float32)
    if config.stain_normalisation:
        work, white = _normalised(work, white)
        small = downsample(work, config.detect_scale)
    tables = od_tables(white)
    config = replace(config, nucleus_threshold=field_nucleus_threshold(small, tables, config))
    cells = _upsample(_detect_cells(small, tables, config), config.detect_scale, work.shape[:2])
    cells, nuclei = _refine_nuclei(work, cells, tables, config)
    if zoom != 1.0:
        cells, nuclei = resize_nearest(cells, rgb.shape[:2]), resize_nearest(nuclei, rgb.shape[:2])
    labels, table = _measure(cells, nuclei)
    return Segmentation(labels=labels, nuclei=nuclei & (labels > 0), cells=table)


def _normalised(rgb: np.ndarray, white: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The field in the reference stains with its new white point; unchanged when stains are not found."""
    normalised = normalise_stain(rgb, white)
    if normalised is None:
        return rgb, white
    return normalised, np.full(3, 255.0, dtype=np.float32)


def resize_rgb(rgb: np.ndarray, zoom: float) -> np.ndarray:
    """Resize an RGB uint8 image by ``zoom`` (area-averaged when shrinking, bilinear when enlarging)."""
    from PIL import Image

    height, width = rgb.shape[:2]
    size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (labels or a mask) to ``shape``."""
    rows = ((np.arange(shape[0]) + 0.5) * (array.shape[0] / shape[0])).astype(np.intp)
    cols = ((np.arange(shape[1]) + 0.5) * (array.shape[1] / shape[1])).astype(np.intp)
    return np.take(np.take(array, rows, axis=0), cols, axis=1)  # two 1-D takes: faster than np.ix_


def tile_windows(
    shape: tuple[int, int], tile_size: int, overlap: int
) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Cut an image into overlapping tiles.

    Args:
        shape: Image height and width.
        tile_size: Tile side including overlap.
        overlap: Pixels shared by neighbouring tiles.

    Yields:
        ``(rows, cols, core_rows, core_cols)``: the tile and the core it owns (cells whose centroid lies
        in the core belong to this tile), both in image coordinates.

    """
    step = tile_size - 2 * overlap
    for y0 in range(0, shape[0], step):
        for x0 in range(0, shape[1], step):
            rows = slice(max(0, y0 - overlap), min(shape[0], y0 + step + overlap))
            cols = slice(max(0, x0 - overlap), min(shape[1], x0 + step + overlap))
            yield rows, cols, slice(y0, min(shape[0], y0 + step)), slice(x0, min(shape[1], x0 + step))


def segment_image(
    image,
    config: SegmentationConfig | None = None,
    *,
    pixel_size_um: float | None = None,
    labels_out: np.ndarray | None = None,
    name: str = "image",
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> Segmentation:
    """Segment white cells in an image of any size, tile by tile.

    Args:
        image: (Y, X, 3[+1]) array, numpy or dask (read lazily tile by tile); 16-bit or float images are
            rescaled, grayscale ones refused (see :func:`~napari_hematology.core.io.to_rgb8`).
        config: Segmentation parameters; defaults if None.
        pixel_size_um: The image's pixel size (see
            :func:`~napari_hematology.core.cells.magnification.find_pixel_size`); None when it is the
            config's own. Tiles are sized so that they hold the same area at any pixel size.
        labels_out: Where to write the labels (e.g. a memory-mapped TIFF or zarr array of the image's
            height and width) so a whole slide never needs its labels in RAM; a new array if None.
        name: Image name for messages.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The segmentation. For tiled images ``nuclei`` is only filled when ``labels_out`` is None.

    Raises:
        InputError: The image cannot be analysed (grayscale, too small, blank...).
        Cancelled: ``should_stop`` asked to stop.

    """
    config = config or SegmentationConfig()
    _check_shape(image, name)
    height, width = image.shape[:2]
    tile_size = config.tile_side(pixel_size_um)
    if height * width <= tile_size**2:
        rgb, _ = to_rgb8(np.asarray(image), name)
        result = segment_field(rgb, config, pixel_size_um=pixel_size_um)
        if labels_out is not None:
            labels_out[...] = result.labels
        (progress or no_progress)(1, 1, "segmenting")
        return result
    overlap = round(config.tile_overlap / config.zoom(pixel_size_um))
    windows = list(tile_windows((height, width), tile_size, overlap))
    segment_tile = partial(segment_field, config=config, pixel_size_um=pixel_size_um)
    return _segment_tiled(image, windows, segment_tile, labels_out, name, progress, should_stop)


def _check_shape(image, name: str) -> None:
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        to_rgb8(np.zeros((16, 16), np.uint8), name)  # raises the grayscale message
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise InputError(f"{name} has shape {image.shape}; expected a colour image (height, width, 3).")


def _segment_tiled(image, windows, segment_tile, labels_out, name, progress, should_stop) -> Segmentation:
    height, width = image.shape[:2]
    keep_nuclei = labels_out is None
    labels = labels_out if labels_out is not None else np.zeros((height, width), dtype=np.int32)
    nuclei = np.zeros((height, width), dtype=bool) if keep_nuclei else np.zeros((0, 0), dtype=bool)
    report = progress or no_progress
    tables: list[pd.DataFrame] = []
    next_id = 1
    tiles = read_ahead(image, [(rows, cols) for rows, cols, _, _ in windows])
    for done, ((rows, cols, core_rows, core_cols), tile) in enumerate(zip(windows, tiles, strict=True)):
        check_cancel(should_stop)
        report(done, len(windows), "segmenting tiles")
        if tile.min() == tile.max():
            continue  # blank margin of a slide
        tile, _ = to_rgb8(tile, f"{name} tile")
        part = segment_tile(tile)
        table = _owned_cells(part.cells, rows, cols, core_rows, core_cols)
        if table.empty:
            continue
        local_ids = table["cell_id"].to_numpy()
        mapping = np.zeros(len(part.cells) + 1, dtype=np.int64)
        mapping[local_ids] = np.arange(next_id, next_id + len(local_ids))
        tile_labels = mapping[part.labels]
        target = np.asarray(labels[rows, cols])
        free = (tile_labels > 0) & (target == 0)
        target[free] = tile_labels[free]
        labels[rows, cols] = target
        if keep_nuclei:
            nuclei[rows, cols] |= part.nuclei & (tile_labels > 0)
        table = table.assign(cell_id=mapping[local_ids])
        tables.append(table)
        next_id += len(local_ids)
    report(len(windows), len(windows), "segmenting tiles")
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CELL_COLUMNS)
    return Segmentation(labels=labels, nuclei=nuclei, cells=cells)


def _owned_cells(
    cells: pd.DataFrame, rows: slice, cols: slice, core_rows: slice, core_cols: slice
) -> pd.DataFrame:
    """Cells of a tile whose centroid lies in the tile's core, shifted to image coordinates."""
    shifted = cells.copy()
    for column in ("centroid_y", "bbox_y0", "bbox_y1"):
        shifted[column] = shifted[column] + rows.start
    for column in ("centroid_x", "bbox_x0", "bbox_x1"):
        shifted[column] = shifted[column] + cols.start
    inside = (
        (shifted["centroid_y"] >= core_rows.start)
        & (shifted["centroid_y"] < core_rows.stop)
        & (shifted["centroid_x"] >= core_cols.start)
        & (shifted["centroid_x"] < core_cols.stop)
    )
    return shifted[inside].reset_index(drop=True)
