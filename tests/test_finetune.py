"""Fine-tuning a cell classifier on a lab's labels: classes, calibration, metadata, bad input, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from napari_hematology.core.cells.classifier import SHIPPED_MODEL_DIR, load_classifier
from napari_hematology.core.cells.finetune import (
    FineTuneConfig,
    cells_from_csv,
    check_labels,
    fine_tune,
    fine_tune_files,
    read_labelled_cells,
)
from napari_hematology.core.errors import InputError

SAMPLES = SHIPPED_MODEL_DIR.parents[1] / "sample_images" / "cells"


def _quick(add_classes: bool = False, calibration_cells: int = 100) -> FineTuneConfig:
    config = FineTuneConfig(add_classes=add_classes, min_calibration_cells=calibration_cells)
    config.train = replace(config.train, epochs=2, batch_size=8, device="cpu")
    return config


@pytest.fixture
def cells_csv(tmp_path):
    """A CELLS.csv of the sample crops (each twice), paths relative to the CSV, plus one broken file."""
    folder = tmp_path / "crops"
    folder.mkdir()
    rows = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        for copy in range(2):
            target = folder / f"{copy}_{path.name}"
            target.write_bytes(path.read_bytes())
            rows.append({"image": f"crops/{target.name}", "label": path.name.split("_")[0]})
    (folder / "broken.png").write_bytes(b"not an image")
    rows.append({"image": "crops/broken.png", "label": "blast"})
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    return tmp_path / "cells.csv"


def test_unknown_labels_are_listed_or_added():
    with pytest.raises(InputError, match="platelet, smudge.*--add-classes"):
        check_labels(["blast", "smudge", "platelet"], ["blast", "lymphocyte"], add_classes=False)
    grown = check_labels(["smudge", "blast"], ["blast", "lymphocyte"], True)
    assert grown == ["blast", "lymphocyte", "smudge"]


def test_unreadable_crops_are_skipped_with_count_and_names(cells_csv):
    base = load_classifier(None, "cpu")
    read = read_labelled_cells(cells_from_csv(cells_csv), base)
    assert len(read.cells) == 10
    assert "1 unreadable crop(s) skipped (broken.png)" in read.skipped_message()
    assert "blast" not in set(read.cells.labels)


@pytest.mark.slow
def test_fine_tune_keeps_metadata_and_grows_head(cells_csv, tmp_path, reference_fits):
    base = load_classifier(None, "cpu")
    base.metadata["lab_note"] = {"kept": 1}
    read = read_labelled_cells(cells_from_csv(cells_csv), base)
    read.cells.labels[:2] = "smudge"
    before = {key: value.clone() for key, value in base.model.state_dict().items()}
    lab = fine_tune(read.cells, base, _quick(add_classes=True), unlabelled=read.cells.crops[:3])
    assert lab.classes == [*base.classes, "smudge"]
    assert lab.metadata["lab_note"] == {"kept": 1}
    assert lab.reference is not None and lab.reference is not base.reference
    assert reference_fits == [len(read.cells) + 3]
    assert lab.metadata["crop_size"] == base.crop_size and lab.metadata["temperature"] == 1.0
    assert all((base.model.state_dict()[key] == value).all() for key, value in before.items())
    table = lab.predict_prepared(read.cells.crops)
    assert "prob_smudge" in table and np.allclose(table.filter(like="prob_").sum(axis=1), 1.0)


@pytest.mark.slow
def test_enough_cells_fit_a_temperature_folded_into_the_head(cells_csv, tmp_path):
    table = cells_from_csv(cells_csv)
    folder, read = fine_tune_files(table, tmp_path / "lab", None, _quick(calibration_cells=5))
    metadata = json.loads((folder / "config.json").read_text())["metadata"]
    assert metadata["fine_tuning"]["calibration_cells"] == 2
    assert 0.5 <= metadata["temperature"] <= 20 and metadata["temperature"] != 1.0
    reloaded = load_classifier(folder, "cpu")
    assert reloaded.classes == load_classifier(None, "cpu").classes
    assert reloaded.reference.embedding_size == reloaded.model.embedding_size
    assert len(reloaded.predict_prepared(read.cells.crops)) == len(read.cells)


class _Memoriser:
    """A stand-in fine-tuned model: right on every cell it did not train on, wrong on every one it did.

    Cells are told apart by their index, written into the first pixel of each crop. It gets the cells of
    ``missed`` wrong too, so its balanced accuracy differs from the base model's.
    """

    def __init__(self, trained: set[int], labels: np.ndarray, missed: str) -> None:
        self.trained, self.labels, self.missed = trained, labels, missed
        self.predicted: list[int] = []

    def predict_prepared(self, crops, **_):
        index = [int(value) for value in crops[:, 0, 0, 0]]
        self.predicted.extend(index)
        right = [self.labels[i] if i not in self.trained and self.labels[i] != self.missed else "wrong"
                 for i in index]
        return pd.DataFrame({"label": right})


@pytest.mark.parametrize("calibration_cells", [100, 5])
def test_comparison_scores_held_out_cells_with_a_model_that_did_not_train_on_them(
    cells_csv, monkeypatch, calibration_cells
):
    from sklearn.metrics import balanced_accuracy_score

    from napari_hematology.core.cells import finetune

    base = load_classifier(None, "cpu")
    cells = read_labelled_cells(cells_from_csv(cells_csv), base).cells
    cells.crops[:, 0, 0, 0] = np.arange(len(cells))
    missed = sorted(set(cells.labels))[0]
    config = _quick(calibration_cells=calibration_cells)
    models = []

    def fake_fine_tune(train, base_model, config=None, progress=None, should_stop=None, unlabelled=None):
        assert base_model is base
        trained = {int(value) for value in train.crops[:, 0, 0, 0]}
        if len(train) >= config.min_calibration_cells:  # fine_tune keeps its calibration cells back
            trained -= {int(i) for i in finetune.calibration_split(train.labels, config)[1]}
        models.append(_Memoriser(trained, cells.labels, missed))
        return models[-1]

    monkeypatch.setattr(finetune, "fine_tune", fake_fine_tune)
    lab, result = finetune.fine_tune_with_comparison(cells, base, config)
    assert lab is models[-1] and result.cells == len(cells) == 10 and result.held_out == 2
    assert result.trainings == len(models) == (1 if calibration_cells <= len(cells) else 2)
    scorer = models[0]
    assert len(scorer.predicted) == 2 and not set(scorer.predicted) & scorer.trained
    held_out = scorer.predicted
    expected = ["wrong" if cells.labels[i] == missed else cells.labels[i] for i in held_out]
    assert result.after == pytest.approx(balanced_accuracy_score(cells.labels[held_out], expected))
    before = base.predict_prepared(cells.crops[held_out])["label"]
    assert result.before == pytest.approx(balanced_accuracy_score(cells.labels[held_out], before))


def test_too_few_cells_to_compare_are_refused(cells_csv):
    from napari_hematology.core.cells.finetune import fine_tune_with_comparison

    base = load_classifier(None, "cpu")
    cells = read_labelled_cells(cells_from_csv(cells_csv), base).cells.subset(np.arange(6))
    with pytest.raises(InputError, match=r"Too few reviewed cells \(6\).*at least 10"):
        fine_tune_with_comparison(cells, base, _quick())


def test_training_steps_count_one_training_from_enough_cells_else_two():
    from napari_hematology.core.cells.finetune import training_steps

    assert training_steps(200) == 100 * 5  # 160 cells trained (40 fit the temperature), batches of 32
    assert training_steps(50) == 100 * 2 + 100 * 2  # 40 cells for the comparison, then all 50


def test_cli_refuses_unknown_labels_and_empty_projects(cells_csv, tmp_path, capsys):
    from napari_hematology.cli import main
    from napari_hematology.core.labels.store import AnnotationStore

    table = pd.read_csv(cells_csv)
    table.loc[0, "label"] = "smudge"
    table.to_csv(cells_csv, index=False)
    assert main(["train-classifier", "--cells", str(cells_csv), "--out", str(tmp_path / "m")]) == 2
    assert "smudge" in capsys.readouterr().err
    with AnnotationStore(tmp_path / "p.sqlite") as store:
        store.add_classes(["blast"])
    project = ["--project", str(tmp_path / "p.sqlite")]
    assert main(["train-classifier", *project, "--out", str(tmp_path / "m")]) == 2
    assert "no reviewed cells" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_batch_norm_statistics_are_re_estimated_on_the_lab_crops(cells_csv):
    import torch

    from napari_hematology.core.cells.classifier import adapt_batch_norm
    from napari_hematology.models.colour_statistics import colour_statistics

    base = load_classifier(None, "cpu")
    crops = read_labelled_cells(cells_from_csv(cells_csv), base).cells.crops
    norm = base.model.statistics_norm
    momentum = norm.momentum
    adapt_batch_norm(base.model, crops)
    expected = colour_statistics(base.model.standardised(torch.from_numpy(crops).permute(0, 3, 1, 2)))
    assert torch.allclose(norm.running_mean, expected.mean(0), rtol=1e-4, atol=1e-4)
    assert torch.allclose(norm.running_var, expected.var(0), rtol=1e-3, atol=1e-4)
    assert norm.momentum == momentum and not base.model.training


def test_project_fine_tuning_uses_unreviewed_crops_only_for_batch_norm(cells_csv, tmp_path, monkeypatch):
    from napari_hematology.core.cells import finetune
    from napari_hematology.core.labels.review import fine_tune_project, lab_model_folder
    from napari_hematology.core.labels.store import AnnotationStore

    table = pd.read_csv(cells_csv)
    table = table[~table["image"].str.endswith("broken.png")]
    label_of = {}
    for image, label in zip(table["image"], table["label"], strict=True):
        for copy in range(3):
            target = cells_csv.parent / f"{image}.{copy}.png"
            target.write_bytes((cells_csv.parent / image).read_bytes())
            label_of[str(target)] = label
    crops = list(label_of)
    reviewed = crops[: 2 * len(crops) // 3]
    project = tmp_path / "lab.sqlite"
    with AnnotationStore(project) as store:
        store.add_classes(load_classifier().classes)
        store.add_cells([{"name": crop, "crop": crop} for crop in crops])
        store.set_labels([(crop, label_of[crop]) for crop in reviewed], "dr_a", "human")
    seen = {}
    real_fine_tune = finetune.fine_tune

    def spy(cells, base, config=None, progress=None, should_stop=None, unlabelled=None):
        seen["labelled"], seen["unlabelled"] = len(cells.labels), unlabelled
        return real_fine_tune(cells, base, config, progress, should_stop, unlabelled=unlabelled)

    monkeypatch.setattr(finetune, "fine_tune", spy)
    result = fine_tune_project(project, config=_quick())
    assert seen["labelled"] == len(reviewed)
    assert seen["unlabelled"] is not None and len(seen["unlabelled"]) == len(crops) - len(reviewed)
    assert result["model_dir"] == lab_model_folder(project)
    assert (result["model_dir"] / "config.json").is_file()
    assert (result["model_dir"] / "atypical.safetensors").is_file()
