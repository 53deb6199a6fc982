"""Predicting with a trained bag model: bag tables, and the labelled cells of one slide image.

Predictions are calibrated class probabilities per bag, with the attention the model gave each cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_hematology.core.calibration import softmax
from napari_hematology.core.cells.classes import DEFAULT_BLAST_THRESHOLD
from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.io import read_image, to_rgb8, write_labels, write_table
from napari_hematology.core.progress import ProgressCallback, StopCallback
from napari_hematology.core.subtype.bags import (
    Bags,
    MilConfig,
    blast_indices,
    check_bag_size,
    classifier_dir,
    encode_bags,
    read_bags_table,
)
from napari_hematology.core.subtype.features import blast_scorer, encode_crops, resolve_encoder
from napari_hematology.core.subtype.fitting import MODEL_NAME, MilModel, bag_outputs

ATTENTION_FILE = "attention.csv"


def load_mil_model(
    directory: str | Path, expected_classes: tuple[str, ...] | list[str] | None = None
) -> MilModel:
    """Load a bag model saved by :meth:`MilModel.save`.

    Args:
        directory: Model folder.
        expected_classes: If given, refuse a model trained for other classes.

    Raises:
        ModelFileError: Not an attention-MIL model folder, or trained for other classes.

    """
    from napari_hematology.core.registry import load_model

    model, metadata = load_model(directory, expected_name=MODEL_NAME)
    classes = tuple(metadata.get("classes") or ())
    if not classes or "encoder" not in metadata:
        raise ModelFileError(f"{directory}: the model's config.json lacks its classes or encoder.")
    if expected_classes is not None and set(expected_classes) != set(classes):
        raise ModelFileError(
            f"{directory} was trained for classes {', '.join(classes)}, not {', '.join(expected_classes)}. "
            "Pick a model trained for these classes, or retrain."
        )
    return MilModel(model, classes, metadata["encoder"], metadata)


def predict_bags(mil: MilModel, bags: Bags) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibrated class probabilities per bag and attention per cell.

    Args:
        mil: A trained model.
        bags: Bags encoded with the model's encoder.

    Returns:
        ``(predictions, attention)``: one row per bag (``bag, predicted, prob_<class>...``) and one row
        per cell (``bag, cell, attention``). With one attention branch per class, a cell's attention is
        that of the predicted class's branch.

    Raises:
        InputError: The features do not have the width the model was trained on.

    """
    expected = int(mil.metadata.get("feature_dim", bags.features[0].shape[1]))
    for name, features in zip(bags.names, bags.features, strict=True):
        if features.shape[1] != expected:
            raise InputError(
                f"bag {name!r}: cells have {features.shape[1]} features but the model expects {expected} "
                f"(encoder {mil.encoder}); encode the cells with the model's encoder."
            )
    logits, attention = bag_outputs(mil.model, bags.features)
    probabilities = softmax(logits, float(mil.model.temperature))
    predicted = probabilities.argmax(1)
    predictions = pd.DataFrame({"bag": bags.names, "predicted": [mil.classes[i] for i in predicted]})
    for i, name in enumerate(mil.classes):
        predictions[f"prob_{name}"] = probabilities[:, i]
    rows = []
    for name, cells, weights, winner in zip(bags.names, bags.cells, attention, predicted, strict=True):
        branch = weights[winner] if len(weights) > 1 else weights[0]
        rows.append(pd.DataFrame({"bag": name, "cell": cells, "attention": branch}))
    return predictions, pd.concat(rows, ignore_index=True)


def bag_config_from_model(mil: MilModel, cache_dir: str | None = None) -> MilConfig:
    """Return the bag-building settings a model was trained with (encoder, blast filter, min size)."""
    settings = mil.metadata.get("settings", {})
    return MilConfig(
        encoder=mil.encoder,
        blasts_only=bool(settings.get("blasts_only", False)),
        blast_threshold=float(settings.get("blast_threshold", DEFAULT_BLAST_THRESHOLD)),
        min_cells=int(settings.get("min_cells", 2)),
        cache_dir=cache_dir,
    )


def predict_from_table(
    model_dir: str | Path,
    bags_csv: str | Path,
    out_csv: str | Path,
    *,
    expected_classes: tuple[str, ...] | None = None,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every bag of ``BAGS.csv``; write ``out_csv`` and ``attention.csv`` next to it.

    A ``label`` column in the table is ignored.

    Returns:
        ``(predictions, attention)`` as written (attention with columns ``bag, image, attention``).

    """
    mil = load_mil_model(model_dir, expected_classes)
    table = read_bags_table(bags_csv)
    bags = encode_bags(
        table,
        bag_config_from_model(mil, cache_dir),
        with_labels=False,
        progress=progress,
        should_stop=should_stop,
    )
    predictions, attention = predict_bags(mil, bags)
    attention = attention.rename(columns={"cell": "image"})
    out_csv = Path(out_csv)
    write_table(out_csv, predictions)
    write_table(out_csv.with_name(ATTENTION_FILE), attention)
    return predictions, attention


@dataclass
class SlidePrediction:
    """Bag-level prediction for the cells of one image.

    Attributes:
        probabilities: Calibrated probability per class.
        predicted: The most probable class.
        cells: One row per cell: ``label`` (id in the label image), ``centroid_y``, ``centroid_x``,
            ``attention`` (and ``blast_probability`` when only blasts were used; excluded cells have NaN
            attention).

    """

    probabilities: dict[str, float]
    predicted: str
    cells: pd.DataFrame


def cell_crops(
    image: np.ndarray, labels: np.ndarray, margin: float = 0.25, name: str = "image"
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Square crops around every labelled cell (bounding box plus a margin), as RGB uint8.

    Returns:
        A table (``label, centroid_y, centroid_x``) and the crops in the same order.

    Raises:
        InputError: Image and labels differ in size, or there is no labelled cell.

    """
    from skimage.measure import regionprops

    if image.shape[:2] != labels.shape[:2]:
        raise InputError(
            f"{name} is {image.shape[1]}x{image.shape[0]} but its cell labels are "
            f"{labels.shape[1]}x{labels.shape[0]}; pick the labels made from this image."
        )
    regions = regionprops(np.asarray(labels).astype(np.int64, copy=False))
    if not regions:
        raise InputError(
            f"{name}: the cell labels contain no cell; segment the cells first (blast detection)."
        )
    crops, rows = [], []
    height, width = labels.shape[:2]
    for region in regions:
        top, left, bottom, right = region.bbox
        half = (1 + margin) * max(bottom - top, right - left) / 2
        cy, cx = (top + bottom) / 2, (left + right) / 2
        y0, y1 = int(max(cy - half, 0)), int(min(cy + half, height))
        x0, x1 = int(max(cx - half, 0)), int(min(cx + half, width))
        crops.append(np.ascontiguousarray(image[y0:y1, x0:x1, :3]))
        rows.append((region.label, *region.centroid))
    return pd.DataFrame(rows, columns=["label", "centroid_y", "centroid_x"]), crops


def predict_cells(
    image: np.ndarray,
    labels: np.ndarray,
    mil: MilModel | str | Path,
    *,
    name: str = "image",
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SlidePrediction:
    """Predict the slide class of one image from its labelled cells.

    Args:
        image: RGB image ``(Y, X, 3)``.
        labels: Cell label image of the same size.
        mil: A trained model, or its folder.
        name: Name of the image (the bag) in messages.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        Class probabilities and per-cell attention.

    """
    mil = mil if isinstance(mil, MilModel) else load_mil_model(mil)
    rgb, _ = to_rgb8(np.asarray(image), name=name)
    cells, crops = cell_crops(rgb, np.asarray(labels), name=name)
    settings = bag_config_from_model(mil)
    keep = np.ones(len(crops), dtype=bool)
    if settings.blasts_only:
        scorer = blast_scorer(classifier_dir(settings.encoder))
        cells["blast_probability"] = encode_crops(crops, scorer, should_stop=should_stop)[:, 0]
        keep[:] = False
        keep[blast_indices(cells["blast_probability"].to_numpy(), settings)[0]] = True
    check_bag_size(name, int(keep.sum()), settings.min_cells)
    kept_crops = [crop for crop, flag in zip(crops, keep, strict=True) if flag]
    features = encode_crops(
        kept_crops, resolve_encoder(mil.encoder), progress=progress, should_stop=should_stop
    )
    bags = Bags(names=[name], features=[features], cells=[cells["label"][keep].tolist()])
    predictions, attention = predict_bags(mil, bags)
    cells["attention"] = np.nan
    cells.loc[keep, "attention"] = attention["attention"].to_numpy()
    probabilities = {c: float(predictions[f"prob_{c}"].iloc[0]) for c in mil.classes}
    return SlidePrediction(probabilities, str(predictions["predicted"].iloc[0]), cells)


def predict_slide(
    image_path: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SlidePrediction:
    """Segment the white cells of one slide image and predict its class with a bag model.

    Writes ``labels.tif`` (cell labels), ``cells.csv`` (one row per cell with its attention) and
    ``prediction.csv`` (``image, predicted, prob_<class>...``) to ``out_dir``.

    Args:
        image_path: Smear image.
        model_dir: Bag model folder.
        out_dir: Output folder (created).
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        The prediction.

    """
    from napari_hematology.core.cells.segmentation import segment_image

    mil = load_mil_model(model_dir)
    image = read_image(image_path)
    segmentation = segment_image(
        image.data, name=Path(image_path).name, progress=progress, should_stop=should_stop
    )
    result = predict_cells(
        np.asarray(image.data),
        segmentation.labels,
        mil,
        name=Path(image_path).name,
        progress=progress,
        should_stop=should_stop,
    )
    out_dir = Path(out_dir)
    write_labels(out_dir / "labels.tif", segmentation.labels)
    write_table(out_dir / "cells.csv", result.cells)
    summary = {"image": str(image_path), "predicted": result.predicted}
    summary.update({f"prob_{name}": p for name, p in result.probabilities.items()})
    write_table(out_dir / "prediction.csv", pd.DataFrame([summary]))
    return result
