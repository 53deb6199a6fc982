"""Attention MIL: model, bag building, caching, training, calibration, prediction, CLI and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_hematology.cli import main
from napari_hematology.core.calibration import fit_temperature, softmax
from napari_hematology.core.errors import InputError, ModelFileError
from napari_hematology.core.registry import create_model, save_model
from napari_hematology.core.subtype.bags import Bags, MilConfig, read_bags_table
from napari_hematology.core.subtype.features import Encoder, encode_files
from napari_hematology.core.subtype.fitting import train_from_table, train_mil
from napari_hematology.core.subtype.prediction import load_mil_model, predict_bags, predict_cells
from napari_hematology.core.training import TrainConfig


def quick_config(**overrides) -> MilConfig:
    settings = dict(
        encoder="descriptors",
        folds=2,
        cache_dir="",
        train=TrainConfig(epochs=15, batch_size=4, learning_rate=3e-3, device="cpu"),
    )
    settings.update(overrides)
    return MilConfig(**settings)


def synthetic_bags(n_bags: int = 24, cells: int = 12, seed: int = 0) -> tuple[Bags, list[np.ndarray]]:
    """Positive bags hide 2-4 'key' cells shifted along feature 0; negatives have none."""
    rng = np.random.default_rng(seed)
    features, labels, keys = [], [], []
    for i in range(n_bags):
        bag = rng.normal(size=(cells, 6)).astype(np.float32)
        key = np.zeros(cells, dtype=bool)
        if i % 2:
            key[rng.choice(cells, rng.integers(2, 5), replace=False)] = True
            bag[key, 0] += 4.0
        features.append(bag)
        labels.append("mutated" if i % 2 else "control")
        keys.append(key)
    bags = Bags(
        names=[f"b{i}" for i in range(n_bags)],
        features=features,
        cells=[list(range(cells)) for _ in range(n_bags)],
        labels=labels,
        groups=[f"p{i}" for i in range(n_bags)],
    )
    return bags, keys


@pytest.fixture(scope="module")
def trained_synthetic():
    bags, keys = synthetic_bags(n_bags=48)
    return train_mil(
        bags, quick_config(train=TrainConfig(epochs=20, batch_size=4, learning_rate=3e-3, device="cpu"))
    ), keys


# ------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("branch_per_class", [False, True])
def test_attention_is_a_distribution_over_real_cells(branch_per_class):
    import torch

    model = create_model("attention_mil", in_features=5, n_classes=3, branch_per_class=branch_per_class)
    features = torch.randn(2, 7, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    logits, attention = model.eval()(features, mask)
    assert logits.shape == (2, 3)
    assert attention.shape == (2, 3 if branch_per_class else 1, 7)
    assert torch.allclose(attention.sum(-1), torch.ones(attention.shape[:2]))
    assert float(attention[1, :, 4:].detach().abs().max()) == 0.0


def test_training_finds_key_cells(trained_synthetic):
    from sklearn.metrics import roc_auc_score

    mil, _ = trained_synthetic
    bags, keys = synthetic_bags(n_bags=40, seed=1)
    predictions, attention = predict_bags(mil, bags)
    assert (predictions["predicted"].to_numpy() == np.array(bags.labels)).mean() >= 0.85
    probabilities = predictions[[f"prob_{c}" for c in mil.classes]].to_numpy()
    assert np.allclose(probabilities.sum(1), 1.0)
    ranking = [
        roc_auc_score(keys[i], attention.loc[attention["bag"] == name, "attention"])
        for i, name in enumerate(bags.names)
        if bags.labels[i] == "mutated"
    ]
    assert np.mean(ranking) >= 0.9


def test_metadata_records_classes_encoder_and_cross_validation(trained_synthetic):
    mil, _ = trained_synthetic
    assert mil.classes == ("control", "mutated")
    assert mil.metadata["encoder"] == "descriptors"
    assert mil.metadata["cross_validation"]["folds"] == 2
    assert mil.metadata["cross_validation"]["auroc"] > 0.9
    assert mil.metadata["temperature"] == pytest.approx(float(mil.model.temperature))


def test_save_load_round_trip(trained_synthetic, tmp_path):
    mil, _ = trained_synthetic
    mil.save(tmp_path / "model")
    loaded = load_mil_model(tmp_path / "model")
    bags, _ = synthetic_bags(n_bags=4, seed=2)
    expected, _ = predict_bags(mil, bags)
    actual, _ = predict_bags(loaded, bags)
    assert loaded.classes == mil.classes
    pd.testing.assert_frame_equal(expected, actual)


def test_temperature_scaling_reduces_overconfidence():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), targets] += 1.0
    overconfident = logits * 5
    temperature = fit_temperature(overconfident, targets)

    def nll(p):
        return -np.log(p[np.arange(300), targets]).mean()

    assert temperature > 2
    assert nll(softmax(overconfident, temperature)) < nll(softmax(overconfident))


# -------------------------------------------------------------------------------------- bad input


def test_unknown_label_names_the_bag():
    bags, _ = synthetic_bags(n_bags=6)
    bags.labels[3] = "typo"
    with pytest.raises(InputError, match="bag 'b3'.*'typo'"):
        train_mil(bags, quick_config(classes=("control", "mutated")))


def test_single_class_is_refused():
    bags, _ = synthetic_bags(n_bags=4)
    bags.labels = ["control"] * 4
    with pytest.raises(InputError, match="at least two classes"):
        train_mil(bags, quick_config())


def test_model_for_other_classes_is_refused(trained_synthetic, tmp_path):
    mil, _ = trained_synthetic
    mil.save(tmp_path / "model")
    with pytest.raises(ModelFileError, match="trained for classes control, mutated"):
        load_mil_model(tmp_path / "model", expected_classes=("PML_RARA", "control"))


def test_other_kind_of_model_is_refused(tmp_path):
    save_model(create_model("mlp", in_features=3, out_features=2), tmp_path / "mlp")
    with pytest.raises(ModelFileError, match="'attention_mil' model is needed"):
        load_mil_model(tmp_path / "mlp")


def test_feature_width_mismatch_names_the_bag(trained_synthetic):
    mil, _ = trained_synthetic
    bags = Bags(names=["slide7"], features=[np.zeros((3, 4), np.float32)], cells=[[1, 2, 3]])
    with pytest.raises(InputError, match="bag 'slide7'.*expects 6"):
        predict_bags(mil, bags)


def write_table(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["bag", "image", "label"]).to_csv(path, index=False)
    return path


def test_table_errors(tmp_path):
    with pytest.raises(InputError, match="lacks column"):
        read_bags_table(_csv(tmp_path / "b.csv", "bag,picture\nb,x.png\n"))
    with pytest.raises(InputError, match="no rows"):
        read_bags_table(_csv(tmp_path / "c.csv", "bag,image,label\n"))
    with pytest.raises(InputError, match="empty 'image' on line"):
        read_bags_table(_csv(tmp_path / "d.csv", "bag,image,label\nb1,,control\n"))


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ real cells, CLI


@pytest.fixture(scope="module")
def idb_table(shared_data, tmp_path_factory) -> Path:
    """12 bags of 6 ALL-IDB2 cells; 'blasty' bags hold 3 blasts."""
    root = shared_data / "single_cells" / "all_idb2"
    labels = pd.read_csv(root / "labels.csv")
    blasts = [str(root / p) for p in labels.loc[labels["label"] == "blast", "image"]][:20]
    normals = [str(root / p) for p in labels.loc[labels["label"] == "normal", "image"]][:30]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        blasty = i % 2 == 1
        cells = list(rng.choice(blasts, 3, replace=False)) if blasty else []
        cells += list(rng.choice(normals, 6 - len(cells), replace=False))
        rows += [(f"slide{i}", cell, "blasty" if blasty else "control") for cell in cells]
    return write_table(tmp_path_factory.mktemp("bags") / "BAGS.csv", rows)


class CountingEncoder(Encoder):
    def __init__(self):
        super().__init__("counting", self._embed)
        self.calls = 0

    def _embed(self, crops):
        self.calls += len(crops)
        return np.array([[c.mean(), c.std()] for c in crops], dtype=np.float32)


def test_feature_cache_reuses_and_invalidates(shared_data, tmp_path):
    source = sorted((shared_data / "single_cells" / "all_idb2" / "images").glob("*.tif"))[:3]
    copies = []
    for path in source:
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    encoder = CountingEncoder()
    first = encode_files(copies, encoder, tmp_path / "cache")
    second = encode_files(copies, encoder, tmp_path / "cache")
    assert encoder.calls == 3
    np.testing.assert_array_equal(first, second)
    stat = copies[0].stat()
    os.utime(copies[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    encode_files(copies, encoder, tmp_path / "cache")
    assert encoder.calls == 4


def test_unreadable_image_names_bag_and_file(tmp_path):
    broken = tmp_path / "cell_broken.png"
    broken.write_bytes(b"not an image")
    table = write_table(tmp_path / "BAGS.csv", [("slideA", "cell_broken.png", "x")] * 2)
    with pytest.raises(InputError, match="bag 'slideA'.*cell_broken.png"):
        train_from_table(table, tmp_path / "model", quick_config())


def test_cli_train_and_predict(idb_table, tmp_path, capsys):
    model = tmp_path / "model"
    code = main(
        [
            "mil",
            "train",
            "--bags",
            str(idb_table),
            "--out",
            str(model),
            "--encoder",
            "descriptors",
            "--folds",
            "2",
            "--epochs",
            "20",
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    assert (model / "model.safetensors").is_file()
    table = pd.read_csv(idb_table)
    table["label"] = "unknown-at-predict-time"  # ignored when predicting
    table.to_csv(tmp_path / "NEW.csv", index=False)
    out = tmp_path / "pred" / "PRED.csv"
    assert (
        main(
            [
                "mil",
                "predict",
                "--model",
                str(model),
                "--bags",
                str(tmp_path / "NEW.csv"),
                "--out",
                str(out),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["bag", "predicted", "prob_control", "prob_blasty"]
    assert len(predictions) == 12
    attention = pd.read_csv(out.with_name("attention.csv"))
    assert list(attention.columns) == ["bag", "image", "attention"]
    assert np.allclose(attention.groupby("bag")["attention"].sum(), 1.0, atol=1e-4)


def _train_from_cli(tmp_path, cache: str) -> int:
    bags, out = str(tmp_path / "BAGS.csv"), str(tmp_path / "m")
    return main(["mil", "train", "--bags", bags, "--out", out, "--encoder", "descriptors", "--cache", cache])


def test_cli_one_cell_bag_is_a_clear_error(idb_table, tmp_path, capsys):
    table = pd.read_csv(idb_table)
    table = pd.concat([table, table.iloc[[0]].assign(bag="lonely")])
    table.to_csv(tmp_path / "BAGS.csv", index=False)
    code = _train_from_cli(tmp_path, cache="")
    assert code == 2
    assert "bag 'lonely' has only 1 cell" in capsys.readouterr().err


def test_cli_conflicting_labels_in_a_bag(idb_table, tmp_path, capsys):
    table = pd.read_csv(idb_table)
    table.loc[0, "label"] = "blasty" if table.loc[0, "label"] == "control" else "control"
    table.to_csv(tmp_path / "BAGS.csv", index=False)
    code = _train_from_cli(tmp_path, cache=str(tmp_path / "cache"))
    assert code == 2
    assert "bag 'slide0' has several labels" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ cells in image


def use_darkness_encoder(monkeypatch) -> None:
    """Encode a crop by how dark its green channel is (feature 0, the synthetic bags' key feature)."""
    import napari_hematology.core.subtype.prediction as prediction_module

    def darkness(crops):
        return np.array([[(255 - c[..., 1].mean()) / 40, 0, 0, 0, 0, 0] for c in crops], np.float32)

    monkeypatch.setattr(prediction_module, "resolve_encoder", lambda spec: Encoder(spec, darkness))


def test_predict_cells_in_an_image(trained_synthetic, monkeypatch):
    mil, _ = trained_synthetic
    use_darkness_encoder(monkeypatch)
    image = np.full((60, 90, 3), 230, np.uint8)
    labels = np.zeros((60, 90), np.int32)
    for index, x in enumerate((5, 35, 65), start=1):
        labels[20:40, x : x + 20] = index
    image[20:40, 65:85] = (60, 30, 200)  # a deeply stained cell with high feature 0
    result = predict_cells(image, labels, mil, name="field.png")
    assert list(result.cells["label"]) == [1, 2, 3]
    assert result.cells["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert result.cells["attention"].idxmax() == 2
    assert set(result.probabilities) == {"control", "mutated"}


def test_predict_cells_without_cells(trained_synthetic):
    mil, _ = trained_synthetic
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="field.png: the cell labels contain no cell"):
        predict_cells(image, np.zeros((40, 40), np.int32), mil, name="field.png")
    with pytest.raises(InputError, match="field.png is 40x40 but its cell labels are 30x30"):
        predict_cells(image, np.ones((30, 30), np.int32), mil, name="field.png")


@pytest.mark.slow
def test_cli_predict_slide_segments_encodes_and_predicts_unseen_fields(tmp_path, capsys):
    """Train on bags of the bundled cell crops (rotated, mirrored), then run the real segmentation, encoder
    and model on two bundled fields whose cells are not among those crops (BCCD labels: 00010 a
    neutrophil and an eosinophil, 00040 a monocyte)."""
    import tifffile
    from PIL import Image

    from napari_hematology.core.cells.samples import SAMPLE_DIR, sample_cells

    granulocytes = {"neutrophil", "eosinophil", "basophil"}
    images = {"granulocyte": [], "mononuclear": []}
    for path in sample_cells():
        crop = np.asarray(Image.open(path))
        group = "granulocyte" if path.name.split("_")[0] in granulocytes else "mononuclear"
        for index, variant in enumerate(np.rot90(c, k) for c in (crop, crop[:, ::-1]) for k in range(4)):
            images[group].append(f"{path.stem}_{index}.png")
            Image.fromarray(np.ascontiguousarray(variant)).save(tmp_path / images[group][-1])
    rng = np.random.default_rng(0)
    rows = [
        (f"{group}{bag}", image, group)
        for group, names in images.items()
        for bag in range(12)
        for image in rng.choice(names, 2, replace=False)
    ]
    train = ["mil", "train", "--bags", str(write_table(tmp_path / "bags.csv", rows)), "--out",
             str(tmp_path / "model"), "--encoder", "descriptors", "--min-cells", "1", "--folds", "0",
             "--epochs", "30", "--cache", ""]
    assert main(train) == 0

    for field, expected in (("BloodImage_00010.jpg", "granulocyte"), ("BloodImage_00040.jpg", "mononuclear")):
        out = tmp_path / field
        assert main(["predict-slide", str(SAMPLE_DIR / "fields" / field), "--model", str(tmp_path / "model"),
                     "--out", str(out)]) == 0
        labels = tifffile.imread(out / "labels.tif")
        cells = pd.read_csv(out / "cells.csv")
        assert set(cells["label"]) == set(np.unique(labels)) - {0} and len(cells) >= 1
        centres = labels[cells["centroid_y"].round().astype(int), cells["centroid_x"].round().astype(int)]
        np.testing.assert_array_equal(centres, cells["label"])
        assert cells["attention"].sum() == pytest.approx(1.0, abs=1e-5)
        prediction = pd.read_csv(out / "prediction.csv")
        assert list(prediction.columns) == ["image", "predicted", "prob_granulocyte", "prob_mononuclear"]
        assert prediction[["prob_granulocyte", "prob_mononuclear"]].sum(axis=1).iloc[0] == pytest.approx(1.0)
        assert prediction["predicted"].iloc[0] == expected, field
        assert f"{field}: {expected}" in capsys.readouterr().out


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    from napari_hematology.core.calibration import expected_calibration_error

    confident = np.tile([0.8, 0.2], (10, 1))
    right_eight_of_ten = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(confident, right_eight_of_ten) == pytest.approx(0.0)
    assert expected_calibration_error(confident, np.zeros(10, int)) == pytest.approx(0.2)
