"""QuPath GeoJSON: cells out as detections and back, regions in as napari polygons."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_hematology.core.cells.classes import CLASS_COLOURS
from napari_hematology.core.errors import InputError
from napari_hematology.core.whole_slide.geojson import (
    cells_to_geojson,
    geojson_to_cells,
    geojson_to_polygons,
    polygons_to_geojson,
    read_geojson,
    write_geojson,
)


@pytest.fixture
def cells() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_id": [1, 2, 3],
            "centroid_y": [100.5, 2500.25, 40.0],
            "centroid_x": [300.75, 80.0, 19000.5],
            "area": [20000, 15000, 30000],
            "blast_probability": [0.9, 0.1, 0.3],
            "label": ["blast", "lymphocyte", "neutrophil"],
        }
    )


def test_cells_export_as_qupath_detections(cells):
    collection = json.loads(json.dumps(cells_to_geojson(cells)))  # what a file holds
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    first = collection["features"][0]
    assert first["properties"]["objectType"] == "detection"
    assert first["properties"]["classification"] == {"name": "blast", "color": list(CLASS_COLOURS["blast"])}
    assert first["properties"]["measurements"]["blast_probability"] == 0.9
    ring = np.asarray(first["geometry"]["coordinates"][0])
    assert np.array_equal(ring[0], ring[-1])  # closed ring
    assert ring[:-1].mean(axis=0) == pytest.approx([300.75, 100.5], abs=0.5)  # GeoJSON is [x, y]
    radius = np.hypot(*(ring[0] - [300.75, 100.5]))
    assert np.pi * radius**2 == pytest.approx(20000, rel=0.02)


def test_round_trip_gives_the_same_cells_and_classes(tmp_path, cells):
    path = write_geojson(tmp_path / "cells.geojson", cells_to_geojson(cells))
    back = geojson_to_cells(read_geojson(path))
    pd.testing.assert_frame_equal(back[cells.columns], cells, check_dtype=False)


def test_old_qupath_measurement_lists_and_geometry_centroids_are_read():
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 20], [0, 20], [0, 0]]]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": "monocyte", "colorRGB": -1},
            "measurements": [{"name": "Nucleus: Area", "value": 42.0}],
        },
    }
    back = geojson_to_cells({"type": "FeatureCollection", "features": [feature]})
    assert back.loc[0, "label"] == "monocyte" and back.loc[0, "Nucleus: Area"] == 42.0
    assert (back.loc[0, "centroid_x"], back.loc[0, "centroid_y"]) == (5.0, 10.0)


def test_annotations_become_yx_polygons_and_detections_are_skipped(cells):
    square = [[0, 0], [100, 0], [100, 50], [0, 50], [0, 0]]
    hole = [[10, 10], [20, 10], [20, 20], [10, 10]]
    collection = cells_to_geojson(cells)
    collection["features"] += [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square, hole]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[square], [square]]},
         "properties": {}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
    ]
    polygons = geojson_to_polygons(collection)
    assert len(polygons) == 3
    np.testing.assert_array_equal(polygons[0], [[0, 0], [0, 100], [50, 100], [50, 0]])


def test_polygons_round_trip_as_annotations():
    polygon = np.array([[10.0, 20.0], [10.0, 220.0], [110.0, 220.0]])
    collection = polygons_to_geojson([polygon], name="Reading area")
    assert collection["features"][0]["properties"]["objectType"] == "annotation"
    np.testing.assert_allclose(geojson_to_polygons(collection)[0], polygon)


def test_files_that_are_not_geojson_say_so(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_geojson(tmp_path / "absent.geojson")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InputError, match="not a GeoJSON file"):
        read_geojson(tmp_path / "bad.geojson")
    with pytest.raises(InputError, match="Export objects as GeoJSON"):
        geojson_to_polygons({"cells": []})
