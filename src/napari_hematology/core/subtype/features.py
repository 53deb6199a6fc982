"""Per-cell feature extraction for bag (MIL) models: pluggable encoders and an on-disk feature cache.

An encoder turns a list of RGB uint8 cell crops into an ``(n, d)`` float array. Encoders are named by a
spec string so a model can record which one it was trained on:

- ``cell_classifier``: the frozen embedding of the shipped blast / white-cell classifier;
- ``cell_classifier:MODEL_DIR``: the embedding of another cell-classifier model folder;
- ``descriptors``: the label-free colour, nucleus-shape and texture descriptors of
  :mod:`napari_hematology.core.cells.descriptors` (no weights, nothing learned; fast).

Features of crops read from files are cached per file (path, modification time and size) in one ``.npz``
per encoder, so re-training a bag model does not re-encode the cells.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hematology.core.cells.crops import read_crop
from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.progress import ProgressCallback, StopCallback, check_cancel

CELL_CLASSIFIER = "cell_classifier"
DESCRIPTORS = "descriptors"
CHUNK = 64


@dataclass
class Encoder:
    """A named cell encoder: ``embed(crops) -> (n, d)`` float32 array."""

    name: str
    embed: Callable[[list[np.ndarray]], np.ndarray]


def resolve_encoder(spec: str) -> Encoder:
    """Build the encoder named by ``spec`` (see the module docstring).

    Raises:
        InputError: Unknown spec, or the cell classifier cannot be loaded.

    """
    if spec == DESCRIPTORS:
        return Encoder(DESCRIPTORS, descriptor_features)
    if spec == CELL_CLASSIFIER or spec.startswith(CELL_CLASSIFIER + ":"):
        classifier = load_cell_classifier(spec.partition(":")[2] or None)
        return Encoder(spec, lambda crops: np.asarray(classifier.embed(crops), dtype=np.float32))
    raise InputError(
        f"Unknown cell encoder {spec!r}; use {CELL_CLASSIFIER}, {CELL_CLASSIFIER}:MODEL_DIR or {DESCRIPTORS}."
    )


def blast_scorer(model_dir: str | None = None) -> Encoder:
    """Build an 'encoder' giving each crop one feature: its blast probability (cell classifier)."""
    classifier = load_cell_classifier(model_dir)
    name = f"blast_probability[{model_dir or 'default'}]"
    return Encoder(
        name,
        lambda crops: classifier.predict(crops)["blast_probability"].to_numpy(np.float32)[:, None],
    )


def load_cell_classifier(model_dir: str | None = None):
    """Load the shared cell classifier (blast detection), or say clearly that it is unavailable."""
    try:
        from napari_hematology.core.cells.classifier import load_classifier
    except ImportError as error:
        raise InputError(
            f"The cell classifier is not available in this installation ({error}); use the "
            f"{DESCRIPTORS} encoder instead."
        ) from error
    try:
        return load_classifier(model_dir=model_dir)
    except ModelFileError as error:
        raise ModelFileError(
            f"{error} (Or use the {DESCRIPTORS} encoder, which needs no weights.)"
        ) from error


def default_cache_dir() -> Path:
    """``$NAPARI_HEMATOLOGY_CACHE`` or the user cache folder, ``.../napari-hematology/features``."""
    if os.environ.get("NAPARI_HEMATOLOGY_CACHE"):
        return Path(os.environ["NAPARI_HEMATOLOGY_CACHE"])
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "napari-hematology" / "features"


class FeatureCache:
    """Features of one encoder, keyed by file path, modification time and size, in one ``.npz`` file."""

    def __init__(self, directory: str | Path, encoder_name: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_name)[:60]
        digest = hashlib.sha1(encoder_name.encode()).hexdigest()[:10]
        self.path = Path(directory) / f"{slug}-{digest}.npz"
        self._features: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as stored:
                    self._features = dict(zip(stored["keys"].tolist(), stored["features"], strict=True))
            except (OSError, ValueError, KeyError):
                self._features = {}  # a damaged cache is rebuilt, never trusted

    @staticmethod
    def key(path: Path) -> str:
        """Cache key of a file: resolved path, modification time and size."""
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"

    def get(self, key: str) -> np.ndarray | None:
        """Return the cached features for ``key``, or None."""
        return self._features.get(key)

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Remember features (not yet written; see :meth:`save`)."""
        self._features.update(zip(keys, np.asarray(features, dtype=np.float32), strict=True))

    def save(self) -> None:
        """Write the cache atomically."""
        if not self._features:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._features)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(temporary, keys=np.array(keys), features=np.stack([self._features[k] for k in keys]))
        os.replace(temporary, self.path)


def encode_files(
    paths: Sequence[str | Path],
    encoder: Encoder,
    cache_dir: str | Path | None = None,
    *,
    owners: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> np.ndarray:
    """Features of the cell crops in ``paths``, from the cache where possible.

    Args:
        paths: Crop image files.
        encoder: The encoder.
        cache_dir: Cache folder; None uses :func:`default_cache_dir`; "" disables caching.
        owners: Optional ``{path: bag}`` so that errors name the bag of an unreadable file.
        progress: Progress callback.
        should_stop: Cancellation callback.

    Returns:
        ``(len(paths), d)`` float32 features, in the order of ``paths``.

    Raises:
        InputError: A file cannot be read (the message names it and its bag).

    """
    paths = [Path(p) for p in paths]
    cache = None if cache_dir == "" else FeatureCache(cache_dir or default_cache_dir(), encoder.name)
    keys = [_checked_key(p, owners) for p in paths]
    found = {k: cache.get(k) for k in keys} if cache else {}
    missing = [i for i, k in enumerate(keys) if found.get(k) is None]
    total = len(missing)
    if progress is not None:
        progress(0, total, f"encoding cells ({encoder.name})")
    for start in range(0, total, CHUNK):
        check_cancel(should_stop)
        chunk = missing[start : start + CHUNK]
        crops = [_read_owned(paths[i], owners) for i in chunk]
        features = np.asarray(encoder.embed(crops), dtype=np.float32)
        for i, vector in zip(chunk, features, strict=True):
            found[keys[i]] = vector
        if cache:
            cache.put([keys[i] for i in chunk], features)
        if progress is not None:
            progress(min(start + CHUNK, total), total, f"encoding cells ({encoder.name})")
    if cache and missing:
        cache.save()
    if not paths:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([found[k] for k in keys]).astype(np.float32)


def _owner_prefix(path: Path, owners: dict[str, str] | None) -> str:
    owner = (owners or {}).get(str(path))
    return f"bag {owner!r}: " if owner is not None else ""


def _checked_key(path: Path, owners: dict[str, str] | None) -> str:
    if not path.is_file():
        raise InputError(f"{_owner_prefix(path, owners)}{path}: no such file.")
    return FeatureCache.key(path)


def _read_owned(path: Path, owners: dict[str, str] | None) -> np.ndarray:
    try:
        return read_crop(path)
    except InputError as error:
        raise InputError(f"{_owner_prefix(path, owners)}{error}") from error


def encode_crops(
    crops: Sequence[np.ndarray],
    encoder: Encoder,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> np.ndarray:
    """Features of in-memory crops (no cache), in chunks with progress and cancellation."""
    parts = []
    total = len(crops)
    for start in range(0, total, CHUNK):
        check_cancel(should_stop)
        parts.append(np.asarray(encoder.embed(list(crops[start : start + CHUNK])), dtype=np.float32))
        if progress is not None:
            progress(min(start + CHUNK, total), total, f"encoding cells ({encoder.name})")
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def descriptor_features(crops: Sequence[np.ndarray]) -> np.ndarray:
    """Describe crops with the label-free descriptors of :mod:`napari_hematology.core.cells.descriptors`.

    Crops are resized to the descriptors' size first.

    Args:
        crops: RGB uint8 crops, one cell roughly centred in each.

    Returns:
        ``(n, d)`` float32 features.

    """
    from napari_hematology.core.cells.descriptors import describe_crop, resize_crop

    return np.stack([describe_crop(resize_crop(crop)) for crop in crops]).astype(np.float32)
