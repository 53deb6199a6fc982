"""Training recipe of the cell classifier: sources, new classes, balancing, synthetic crops, augmentation."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from test_classifier import make_data_root

from napari_hematology.core.cells.augmentation import augment
from napari_hematology.core.cells.classes import (
    BLAST,
    CELL_CLASSES,
    CLASS_COLOURS,
    IMMATURE_GRANULOCYTE,
    NORMAL_TYPES,
    OTHER,
)
from napari_hematology.core.cells.recipe import ClassifierRecipe, sample_weights
from napari_hematology.core.cells.training_data import (
    NORMAL,
    SYNTHETIC,
    CellSet,
    background_crops,
    cap_per_label,
    list_training_crops,
    load_cell_set,
)
from napari_hematology.core.errors import InputError


def cell_set(sources: list[str], labels: list[str], noisy: list[bool] | None = None) -> CellSet:
    count = len(labels)
    return CellSet(
        crops=np.zeros((count, 8, 8, 3), np.uint8), labels=np.array(labels, dtype=object),
        sources=np.array(sources, dtype=object), groups=np.arange(count).astype(str).astype(object),
        files=np.full(count, "", dtype=object), noisy=np.array(noisy or [False] * count))


def test_every_class_has_a_colour():
    assert set(CELL_CLASSES) <= set(CLASS_COLOURS)
    assert CELL_CLASSES[: len(NORMAL_TYPES) + 1] == (*NORMAL_TYPES, BLAST)


def test_pbc_joins_the_sources_with_its_classes_mapped(tmp_path):
    table = list_training_crops(make_data_root(tmp_path))
    pbc = table[table["source"] == "pbc"]
    assert sorted(pbc["label"]) == sorted(["neutrophil", IMMATURE_GRANULOCYTE, OTHER])
    assert pbc["group"].is_unique and not pbc["noisy"].any()
    assert set(table["source"]) == {"all_idb2", "bccd_crops", "wbc_seg/dataset1", "wbc_seg/dataset2", "pbc"}
    assert set(table["label"]) - {NORMAL} <= set(CELL_CLASSES)


def test_missing_pbc_is_named(tmp_path):
    root = make_data_root(tmp_path)
    shutil.rmtree(root / "single_cells" / "pbc")
    with pytest.raises(InputError, match="single_cells/pbc"):
        list_training_crops(root)


def test_cap_keeps_at_most_cap_per_source_and_label_reproducibly():
    table = pd.DataFrame({"source": ["a"] * 10 + ["b"] * 3, "label": ["x"] * 6 + ["y"] * 4 + ["x"] * 3})
    capped = cap_per_label(table, 2, seed=0)
    sizes = capped.groupby(["source", "label"]).size().to_dict()
    assert sizes == {("a", "x"): 2, ("a", "y"): 2, ("b", "x"): 2}
    assert capped.equals(cap_per_label(table, 2, seed=0))
    assert len(cap_per_label(table, 0, seed=0)) == len(table)


def test_every_source_weighs_the_same_and_rare_labels_more():
    cells = cell_set(["big"] * 9 + ["small"] * 3, ["x"] * 8 + ["y"] + ["x"] * 3)
    weights = sample_weights(cells, noisy_weight=1.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[:9].sum() == pytest.approx(weights[9:].sum())
    assert weights[8] > weights[0]


def test_noisy_crops_count_less():
    cells = cell_set(["a", "a"], ["x", "x"], noisy=[True, False])
    weights = sample_weights(cells, noisy_weight=0.5)
    assert weights[0] == pytest.approx(weights[1] / 2)


def test_a_normal_cell_may_be_any_normal_type_but_nothing_else():
    allowed = cell_set(["all_idb2"], [NORMAL]).allowed(list(CELL_CLASSES))[0]
    assert [name for name, ok in zip(CELL_CLASSES, allowed, strict=True) if ok] == list(NORMAL_TYPES)


def test_background_crops_are_pale_and_differ():
    crops = background_crops(6, 64, seed=1)
    assert crops.shape == (6, 64, 64, 3) and crops.dtype == np.uint8
    assert crops.mean() > 150
    assert not np.array_equal(crops[0], crops[1])
    np.testing.assert_array_equal(crops, background_crops(6, 64, seed=1))


def test_load_cell_set_adds_synthetic_other_crops(tmp_path):
    recipe = ClassifierRecipe(background_crops=5, per_label_cap=1)
    cells = load_cell_set(make_data_root(tmp_path), recipe)
    synthetic = cells.sources == SYNTHETIC
    assert synthetic.sum() == 5 and set(cells.labels[synthetic]) == {OTHER}
    originals = np.array(["#shifted" not in name for name in cells.files])
    assert (cells.sources[originals] == "all_idb2").sum() == 2  # one blast, one normal
    assert (cells.sources[~originals] == "all_idb2").sum() == 2 * recipe.shifted_copies
    all_idb2 = cells.sources == "all_idb2"
    shifted_of = {name.split("#")[0] for name in cells.files[~originals & all_idb2]}
    assert shifted_of == set(cells.files[originals & all_idb2])
    assert cells.crops.shape[1:] == (recipe.crop_size, recipe.crop_size, 3)


def test_strong_stain_jitter_changes_colours_more_than_mild():
    import torch

    images = torch.full((64, 3, 16, 16), 160.0)

    def colour_spread(stain: float) -> float:
        recipe = ClassifierRecipe(stain_jitter=stain, scale_jitter=0.0, stain_amounts=0.0)
        augmented = augment(images, torch.Generator().manual_seed(0), recipe)
        return float(augmented.mean(dim=(2, 3)).std(dim=0).mean())

    assert colour_spread(3.0) > 2 * colour_spread(1.0)
    assert colour_spread(0.0) == pytest.approx(0.0, abs=1e-3)


def test_stain_amounts_restain_each_crop_and_standardisation_undoes_a_paler_stain():
    import torch

    from napari_hematology.core.cells.crops import normalise_crop, read_crop
    from napari_hematology.core.cells.samples import sample_cells
    from napari_hematology.core.cells.shifts import restain
    from napari_hematology.models.cell_classifier import standardise_stain_amounts

    cell = normalise_crop(read_crop(sample_cells()[0]))
    batch = torch.from_numpy(np.stack([cell] * 16)).permute(0, 3, 1, 2).float()

    def darkness_spread(amounts: float) -> float:
        recipe = ClassifierRecipe(stain_jitter=0.0, scale_jitter=0.0, stain_amounts=amounts)
        augmented = augment(batch, torch.Generator().manual_seed(0), recipe)
        return float((255 - augmented).mean(dim=(1, 2, 3)).std())

    assert darkness_spread(0.3) > 2 * darkness_spread(0.0) + 1.0  # each crop drew its own stain amounts
    pale = torch.from_numpy(restain(cell, purple=0.6, pink=0.6)[None]).permute(0, 3, 1, 2).float()
    as_is = batch[:1]
    before = float((pale - as_is).abs().mean())
    after = float((standardise_stain_amounts(pale) - standardise_stain_amounts(as_is)).abs().mean())
    assert after < 0.5 * before


def test_blur_softens_edges():
    import torch

    images = torch.zeros((8, 3, 32, 32))
    images[:, :, :, 16:] = 255.0
    still = ClassifierRecipe(stain_jitter=0.0, scale_jitter=0.0)
    sharp = augment(images, torch.Generator().manual_seed(0), still)
    blurred = augment(images, torch.Generator().manual_seed(0), replace(still, max_blur=1.0))

    def edge(batch) -> float:
        return float(batch.diff(dim=3).abs().amax(dim=(1, 2, 3)).mean())

    assert edge(blurred) < edge(sharp)


def test_grayscale_augmentation_greys_the_asked_share_of_crops():
    import torch

    images = torch.zeros((400, 3, 8, 8))
    images[:, 0] = 200.0
    recipe = ClassifierRecipe(stain_jitter=0.0, scale_jitter=0.0, grayscale_probability=0.3)
    augmented = augment(images, torch.Generator().manual_seed(0), recipe)
    grey = (augmented.amax(dim=1) - augmented.amin(dim=1)).amax(dim=(1, 2)) < 1e-3
    assert 0.2 < float(grey.float().mean()) < 0.4


@pytest.mark.parametrize(("statistics", "per_crop"), [(True, False), (False, True)])
def test_classifier_options_set_the_embedding_and_ignore_a_crops_stain_cast(statistics, per_crop):
    import torch

    from napari_hematology.core.registry import create_model
    from napari_hematology.models.colour_statistics import STATISTICS_SIZE

    model = create_model("cell_classifier", num_classes=3, colour_statistics=statistics,
                         per_crop_norm=per_crop).eval()
    base = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 100 + 50
    tinted = base + torch.tensor([30.0, -20.0, 10.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        embedding = model.embed(base)
    same = torch.allclose(model.normalise(base), model.normalise(tinted), atol=1e-4)
    assert embedding.shape[1] == model.embedding_size
    assert (model.embedding_size > STATISTICS_SIZE) and (statistics == (model.statistics_norm is not None))
    assert same == per_crop


def test_lower_resolution_softens_about_half_the_crops():
    import torch

    images = torch.zeros((200, 3, 32, 32))
    images[:, :, ::2] = 255.0  # one-pixel stripes: lost at any lower resolution
    still = ClassifierRecipe(stain_jitter=0.0, scale_jitter=0.0)
    augmented = augment(images, torch.Generator().manual_seed(0), replace(still, max_downsample=3.0))
    sharp = augment(images, torch.Generator().manual_seed(0), still)
    stripes = augmented.diff(dim=2).abs().mean(dim=(1, 2, 3)) / sharp.diff(dim=2).abs().mean(dim=(1, 2, 3))
    assert 0.3 < float((stripes < 0.5).float().mean()) < 0.7


def test_fold_temperature_divides_the_logits():
    import torch

    from napari_hematology.core.cells.classifier import fold_temperature
    from napari_hematology.core.registry import create_model

    model = create_model("cell_classifier", num_classes=4).eval()
    images = torch.rand((3, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        before = model(images)
        fold_temperature(model, 2.5)
        after = model(images)
    torch.testing.assert_close(after, before / 2.5)
