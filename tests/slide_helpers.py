"""Small whole slides made by the tests: a mosaic of the bundled fields written as scanners write slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

APERIO_HEADER = "Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=70"


def mosaic(height: int, width: int) -> np.ndarray:
    """The bundled 640x480 fields tiled (shuffled per row) to ``height`` x ``width`` RGB pixels."""
    from napari_hematology.core.cells.samples import sample_fields
    from napari_hematology.core.io import read_image

    fields = [np.asarray(read_image(path).data) for path in sample_fields()]
    field_height, field_width = fields[0].shape[:2]
    rows = [
        np.concatenate(
            [fields[(row * 3 + column) % len(fields)] for column in range(-(-width // field_width))], axis=1
        )
        for row in range(-(-height // field_height))
    ]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:height, :width])


def write_ome_pyramid(path: Path, base: np.ndarray, levels: int = 3, pixel_size_um: float | None = 0.25,
                      unit: str = "µm") -> Path:
    """A pyramidal OME-TIFF (sub-resolutions in SubIFDs), with PhysicalSizeX/Y when given."""
    metadata = {"axes": "YXS"}
    if pixel_size_um is not None:
        metadata |= {"PhysicalSizeX": pixel_size_um, "PhysicalSizeXUnit": unit,
                     "PhysicalSizeY": pixel_size_um, "PhysicalSizeYUnit": unit}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(base, subifds=levels - 1, tile=(256, 256), photometric="rgb", metadata=metadata)
        for level in range(1, levels):
            tif.write(base[:: 2**level, :: 2**level], subfiletype=1, tile=(256, 256), photometric="rgb")
    return path


def write_svs(path: Path, base: np.ndarray, mpp: float = 0.25) -> Path:
    """An Aperio-style SVS: tiled JPEG baseline, stripped thumbnail, tiled 4x level, MPP described."""
    height, width = base.shape[:2]
    description = APERIO_HEADER.format(w=width, h=height) + f"|AppMag = 40|MPP = {mpp}"
    common = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(256, 256), compression="jpeg", description=description, **common)
        tif.write(np.ascontiguousarray(base[::8, ::8]), description=description, **common)
        tif.write(np.ascontiguousarray(base[::4, ::4]), tile=(256, 256), compression="jpeg",
                  description=description, **common)
    return path


def synthetic_smear(height: int = 1200, width: int = 3000, radius: int = 4, seed: int = 0) -> np.ndarray:
    """A smear in three thirds along x: thick (red cells piled up), monolayer (side by side), feathered
    edge (sparse). Red cells absorb light additively (Beer-Lambert), so overlaps are darker."""
    rng = np.random.default_rng(seed)
    density = np.zeros((height, width, 3), np.float32)
    one_cell = np.array([0.25, 0.55, 0.35], np.float32)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = (yy**2 + xx**2 <= radius**2).astype(np.float32)[..., None] * one_cell
    area = np.pi * radius**2
    thirds = [(0, width // 3), (width // 3, 2 * width // 3), (2 * width // 3, width)]
    for (x0, x1), cover in zip(thirds, (2.5, 0.55, 0.08), strict=True):
        if cover < 1:  # a jittered grid: cells side by side without piling up
            side = int(np.sqrt(area / cover))
            grid_y, grid_x = np.mgrid[radius : height - radius : side, x0 + radius : x1 - radius : side]
            ys = np.clip(grid_y.ravel() + rng.integers(-1, 2, grid_y.size), radius, height - radius - 1)
            xs = np.clip(grid_x.ravel() + rng.integers(-1, 2, grid_x.size), radius, width - radius - 1)
        else:
            count = int(cover * height * (x1 - x0) / area)
            ys = rng.integers(radius, height - radius, count)
            xs = rng.integers(x0 + radius, x1 - radius, count)
        for y, x in zip(ys, xs, strict=True):
            density[y - radius : y + radius + 1, x - radius : x + radius + 1] += disc
    rgb = 240 * np.exp(-density) + rng.normal(0, 2, density.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)
