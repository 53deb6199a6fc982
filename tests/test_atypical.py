"""Atypical score: the embedding reference, its file, and the fallback for folders without one."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from napari_hematology.core.cells.atypical import (
    REFERENCE_FILE,
    fit_reference,
    load_reference,
    save_reference,
)
from napari_hematology.core.cells.classifier import atypical_score, load_classifier
from napari_hematology.core.cells.recipe import save_classifier
from napari_hematology.core.cells.samples import sample_cells
from napari_hematology.core.errors import ModelFileError

CENTRES = np.random.default_rng(0).normal(0, 4, (3, 40))
SCALES = np.geomspace(0.1, 10, 40)


def clustered_embeddings(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 40-dimensional embeddings with unequal feature scales, like a network's."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, count)
    return (CENTRES[classes] + rng.normal(0, 1, (count, 40))) * SCALES, classes


@pytest.fixture(scope="module")
def reference():
    embeddings, classes = clustered_embeddings(600)
    return fit_reference(embeddings, classes)


def test_training_like_cells_score_low_and_far_away_cells_score_one(reference):
    new_cells = clustered_embeddings(300, seed=1)[0]
    typical = reference.score(new_cells)
    assert 0.35 < typical.mean() < 0.65 and np.mean(typical > 0.95) < 0.1
    np.testing.assert_array_equal(reference.score(new_cells + 30 * SCALES), 1.0)
    between = reference.score(new_cells + 0.5 * SCALES)
    assert typical.mean() + 0.15 < between.mean() < 0.95


def test_score_is_the_share_of_training_cells_closer_to_their_class(reference):
    embeddings, _ = clustered_embeddings(600)
    scores = reference.score(embeddings)
    assert reference.distance_quantiles.shape == (101,)
    np.testing.assert_allclose(np.quantile(scores, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.02)


def test_distance_is_mahalanobis_to_the_nearest_class_in_every_direction():
    """Gaussian classes of one correlated, unequal covariance: the share of training cells within
    Mahalanobis distance r of their class mean is the chi distribution's CDF at r, whichever direction a
    cell lies in. A Euclidean distance, an unwhitened axis or the wrong class mean would not give that."""
    from scipy.stats import chi2

    rng = np.random.default_rng(3)
    dims = 6
    axes = np.linalg.qr(rng.normal(size=(dims, dims)))[0]
    mixing = axes * np.geomspace(0.5, 5.0, dims)  # within-class spread 0.5 along one axis, 5 along another
    means = (30 * np.eye(3, dims)) @ mixing.T  # three classes, 30 within-class units apart
    classes = rng.integers(0, 3, 6000)
    reference = fit_reference(means[classes] + rng.normal(size=(6000, dims)) @ mixing.T, classes)
    for distance in (1.5, 2.5, 3.5):
        along_widest = means[0] + distance * mixing[:, -1]  # 10 times further in Euclidean terms
        along_narrowest = means[1] + distance * mixing[:, 0]
        expected = chi2.cdf(distance**2, dims)
        np.testing.assert_allclose(reference.score(np.stack([along_widest, along_narrowest])), expected,
                                   atol=0.03)


def test_uncertainty_fallback_is_zero_when_sure_and_one_when_evenly_spread():
    probabilities = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    np.testing.assert_allclose(atypical_score(probabilities), [0.0, 1.0, 0.75, 0.3])
    np.testing.assert_array_equal(atypical_score(np.ones((2, 1))), [0.0, 0.0])


@pytest.mark.parametrize("count", [1, 2, 5])
def test_tiny_fits_give_scores_in_range(count):
    embeddings, _ = clustered_embeddings(count)
    small = fit_reference(embeddings, np.arange(count) % 2, components=32)
    assert small.projection.shape == (40, max(1, count - 1))
    scores = small.score(np.vstack([embeddings, embeddings + 100]))
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    assert (scores[count:] == 1.0).all()


def test_reference_round_trips_and_a_stale_file_is_removed(reference, tmp_path):
    save_reference(reference, tmp_path)
    loaded = load_reference(tmp_path, reference.embedding_size)
    for name, value in vars(reference).items():
        np.testing.assert_array_equal(getattr(loaded, name), value)
    save_reference(None, tmp_path)
    assert not (tmp_path / REFERENCE_FILE).exists() and load_reference(tmp_path, 40) is None


def test_a_reference_that_does_not_fit_the_model_is_refused(reference, tmp_path):
    save_reference(reference, tmp_path)
    with pytest.raises(ModelFileError, match="another model"):
        load_reference(tmp_path, reference.embedding_size + 1)
    (tmp_path / REFERENCE_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="not a readable"):
        load_reference(tmp_path, reference.embedding_size)


@pytest.fixture(scope="module")
def folder_with_reference(tmp_path_factory):
    """The shipped model saved with a reference fitted on the bundled sample crops, turned four ways."""
    shipped = load_classifier(None, "cpu")
    crops = shipped.prepare(_sample_images())
    turned = np.ascontiguousarray(np.concatenate([np.rot90(crops, turns, axes=(1, 2)) for turns in range(4)]))
    folder = save_classifier(shipped.with_reference(turned), tmp_path_factory.mktemp("model"))
    return folder, crops


def _sample_images() -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in sample_cells()]


def test_a_folder_with_a_reference_scores_from_embeddings_in_one_pass(folder_with_reference):
    folder, crops = folder_with_reference
    classifier = load_classifier(folder, "cpu")
    assert classifier.reference is not None
    # mirrored cells, none of the reference's own (whose distances sit on the stored quantiles)
    mirrored = [flipped for image in _sample_images() for flipped in (image[:, ::-1], image.swapaxes(0, 1))]
    table = classifier.predict(mirrored)
    expected = classifier.reference.score(classifier.embed(mirrored))
    assert ((expected > 0.05) & (expected < 0.95)).sum() >= 3  # not all beyond every training cell
    np.testing.assert_allclose(table["atypical_score"], expected, atol=1e-4)
    uncertainty = atypical_score(table.filter(like="prob_").to_numpy())
    assert not np.allclose(table["atypical_score"], uncertainty)
    hidden = classifier.predict([np.zeros((80, 80, 3), np.uint8)])
    assert hidden["label"][0] == "other" and hidden["atypical_score"][0] == 1.0


def test_a_folder_without_a_reference_falls_back_to_the_uncertainty(folder_with_reference, tmp_path):
    folder, crops = folder_with_reference
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / REFERENCE_FILE).unlink()
    classifier = load_classifier(bare, "cpu")
    assert classifier.reference is None
    table = classifier.predict_prepared(crops)
    uncertainty = atypical_score(table.filter(like="prob_").to_numpy())
    np.testing.assert_allclose(table["atypical_score"], uncertainty)
