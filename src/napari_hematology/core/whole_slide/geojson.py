"""QuPath-compatible GeoJSON: cells out as detections, regions in as polygons.

QuPath opens a GeoJSON ``FeatureCollection`` dropped on a slide (File > Import objects). Each cell becomes a
``detection`` whose geometry is a circle of the cell's area around its centroid, with its class under
``classification`` (``name`` and ``color``) and its numeric columns under ``measurements``. Regions drawn
in QuPath (annotations exported with File > Export objects as GeoJSON) come back as polygons that limit
the analysis. Coordinates are full-resolution slide pixels, ``[x, y]`` as GeoJSON and QuPath write them;
polygons in this package are ``(N, 2)`` arrays of ``(y, x)`` as napari Shapes use them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.cells.classes import CLASS_COLOURS, OTHER_COLOUR
from napari_hematology.core.errors import InputError

CIRCLE_VERTICES = 24
POSITION_COLUMNS = ("centroid_x", "centroid_y")
UNCLASSIFIED = "unclassified"


def cells_to_geojson(cells: pd.DataFrame, class_column: str = "label") -> dict:
    """Turn a cell table into a QuPath detection ``FeatureCollection``.

    Args:
        cells: One row per cell with ``centroid_y``, ``centroid_x``, ``area`` and ``class_column``;
            every other numeric column is written as a measurement.
        class_column: Column holding each cell's class name.

    Returns:
        The GeoJSON object (write it with :func:`write_geojson`).

    """
    numeric = [
        column
        for column in cells.columns
        if column != class_column and pd.api.types.is_numeric_dtype(cells[column])
    ]
    features = []
    for row in cells.to_dict("records"):
        name = str(row.get(class_column) or UNCLASSIFIED)
        measurements = {column: _json_number(row[column]) for column in numeric}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [_circle(row)]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(CLASS_COLOURS.get(name, OTHER_COLOUR))},
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _json_number(value) -> float | int | None:
    if pd.isna(value):
        return None
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _circle(row: dict) -> list[list[float]]:
    radius = max(1.0, float(np.sqrt(max(float(row.get("area") or 0.0), 1.0) / np.pi)))
    angles = np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False)
    ring = [
        [round(row["centroid_x"] + radius * np.cos(a), 2), round(row["centroid_y"] + radius * np.sin(a), 2)]
        for a in angles
    ]
    return ring + [ring[0]]


def geojson_to_cells(collection: dict, class_column: str = "label") -> pd.DataFrame:
    """Read QuPath detections back into a cell table.

    The centroid comes from the ``centroid_x``/``centroid_y`` measurements when present (as this package
    writes them), otherwise from the geometry's vertices.

    Args:
        collection: A GeoJSON ``FeatureCollection``.
        class_column: Column to put each detection's class name in.

    Returns:
        One row per detection: ``class_column`` and every measurement.

    """
    rows = []
    for feature in _features(collection):
        properties = feature.get("properties") or {}
        if properties.get("objectType", "annotation") != "detection":
            continue
        row = _measurements(properties)
        if not all(column in row for column in POSITION_COLUMNS):
            ring = np.asarray(_outer_rings(feature["geometry"])[0], dtype=float)
            row["centroid_x"], row["centroid_y"] = ring[:-1].mean(axis=0)
        classification = properties.get("classification") or {}
        row[class_column] = classification.get("name", UNCLASSIFIED)
        rows.append(row)
    return pd.DataFrame(rows)


def _measurements(properties: dict) -> dict:
    """QuPath >= 0.4 writes measurements as an object, older versions as a list of name/value pairs."""
    measurements = properties.get("measurements") or {}
    if isinstance(measurements, list):
        return {item["name"]: item["value"] for item in measurements}
    return dict(measurements)


def geojson_to_polygons(collection: dict) -> list[np.ndarray]:
    """The regions of a GeoJSON file (annotations drawn in QuPath) as polygons.

    Polygons and the parts of MultiPolygons are returned; holes are ignored, and detections are skipped
    (regions are what limits an analysis).

    Args:
        collection: A GeoJSON ``FeatureCollection``, ``Feature`` or bare geometry.

    Returns:
        ``(N, 2)`` arrays of ``(y, x)`` vertices in slide pixels, one per region.

    """
    polygons = []
    for feature in _features(collection):
        if (feature.get("properties") or {}).get("objectType") == "detection":
            continue
        for ring in _outer_rings(feature.get("geometry") or {}):
            vertices = np.asarray(ring, dtype=float)[:, :2]
            if len(vertices) > 1 and np.array_equal(vertices[0], vertices[-1]):
                vertices = vertices[:-1]
            if len(vertices) >= 3:
                polygons.append(vertices[:, ::-1].copy())
    return polygons


def polygons_to_geojson(polygons: list[np.ndarray], name: str = "Reading area") -> dict:
    """Write polygons (``(y, x)`` vertices) as QuPath annotations.

    Args:
        polygons: One ``(N, 2)`` array per region.
        name: Classification name QuPath shows for the regions.

    Returns:
        The GeoJSON ``FeatureCollection``.

    """
    features = []
    for polygon in polygons:
        ring = [[float(x), float(y)] for y, x in np.asarray(polygon, dtype=float)]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
                "properties": {"objectType": "annotation", "classification": {"name": name}},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _features(collection: dict) -> list[dict]:
    kind = collection.get("type") if isinstance(collection, dict) else None
    if kind == "FeatureCollection":
        return list(collection.get("features") or [])
    if kind == "Feature":
        return [collection]
    if kind in ("Polygon", "MultiPolygon"):
        return [{"type": "Feature", "geometry": collection, "properties": {}}]
    raise InputError(
        "Not a GeoJSON FeatureCollection, Feature or polygon; export the objects from QuPath with "
        "File > Export objects as GeoJSON."
    )


def _outer_rings(geometry: dict) -> list:
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry["coordinates"][0]]
    if kind == "MultiPolygon":
        return [polygon[0] for polygon in geometry["coordinates"]]
    return []


def write_geojson(path: str | Path, collection: dict) -> Path:
    """Write a GeoJSON object to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collection))
    return path


def read_geojson(path: str | Path) -> dict:
    """Read a GeoJSON file.

    Raises:
        InputError: The file is missing or not JSON.

    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path.name}: not a GeoJSON file ({error}).") from error
