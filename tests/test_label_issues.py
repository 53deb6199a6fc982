"""Label-issue detection (confident learning on out-of-fold probabilities) and its CLI contract."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from napari_hematology.cli import main
from napari_hematology.core.errors import InputError
from napari_hematology.core.labels.issues import (
    ISSUE_COLUMNS,
    IssueConfig,
    encode_labels,
    find_label_issues,
    find_label_issues_in_crops,
    fit_classifier,
    out_of_fold_probabilities,
    pretrain_crop_encoder,
    rank_label_issues,
)
from napari_hematology.core.registry import create_model


def cpu_config(epochs: int = 30, **fields) -> IssueConfig:
    """Issue settings that train on the CPU for ``epochs`` epochs per fold."""
    config = IssueConfig(**fields)
    config.train = replace(config.train, epochs=epochs, device="cpu")
    return config


FAST = cpu_config(folds=3, epochs=15)


@pytest.fixture(scope="module")
def idb_cells(shared_data) -> pd.DataFrame:
    """40 ALL-IDB2 crops (20 blast, 20 normal), absolute paths, with 4 labels flipped."""
    table = pd.read_csv(shared_data / "single_cells" / "all_idb2" / "labels.csv")
    table = pd.concat(
        [table[table["label"] == name].head(20) for name in ("blast", "normal")], ignore_index=True
    )
    table["image"] = [str(shared_data / "single_cells" / "all_idb2" / path) for path in table["image"]]
    table["true"] = table["label"]
    flipped = [0, 5, 25, 30]
    table.loc[flipped, "label"] = table.loc[flipped, "label"].map({"blast": "normal", "normal": "blast"})
    table["flipped"] = table.index.isin(flipped)
    return table


def test_rank_flags_the_confidently_contradicted_label():
    codes = np.array([0, 0, 0, 1, 1, 1, 0])
    probabilities = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 3 + [[0.02, 0.98]])
    issues = rank_label_issues(codes, probabilities, ["blast", "normal"])
    assert issues["issue_score"].idxmax() == 6
    assert issues.loc[6, "suggested"] == "normal"
    assert bool(issues.loc[6, "is_issue"]) and not issues["is_issue"].iloc[:6].any()


def _coloured_crops(rng, colours: dict[str, tuple[int, int, int]], per_class: int, size: int = 24):
    """Noisy crops with a disc of one colour per class on a light background."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    crops, truth = [], []
    for name, colour in colours.items():
        for _ in range(per_class):
            crop = np.full((size, size, 3), 230.0)
            crop[disc] = colour
            crops.append(np.clip(crop + rng.normal(0, 12, crop.shape), 0, 255).astype(np.uint8))
            truth.append(name)
    return np.stack(crops), np.asarray(truth)


def test_separable_crops_find_planted_flips():
    rng = np.random.default_rng(0)
    crops, truth = _coloured_crops(rng, {"a": (150, 60, 160), "b": (200, 90, 90), "c": (90, 90, 200)}, 30)
    given = truth.copy()
    given[[1, 40, 70]] = ["b", "c", "a"]
    config = cpu_config(folds=3, epochs=15, crop_size=24)
    issues = find_label_issues_in_crops(crops, list(given), config)
    assert set(issues.nlargest(3, "issue_score").index) == {1, 40, 70}
    assert list(issues.loc[[1, 40, 70], "suggested"]) == ["a", "b", "c"]


def test_pretrained_encoder_is_where_every_coteaching_member_starts():
    crops, truth = _coloured_crops(np.random.default_rng(1), {"a": (150, 60, 160), "b": (90, 90, 200)}, 8)
    config = cpu_config(crop_size=24, pretrain_epochs=2, epochs=1, loss="coteaching")
    encoder = pretrain_crop_encoder(crops, config)
    assert set(encoder) == set(create_model("crop_cnn", out_features=2)[:-1].state_dict())
    frozen = replace(config, train=replace(config.train, learning_rate=0.0))
    model, _ = fit_classifier(crops, encode_labels(list(truth))[0], 2, frozen, pretrained=encoder)
    for member in model.members:
        assert member[0].weight.detach().equal(encoder["0.weight"])
        assert member[-1].out_features == 2


def test_pretraining_runs_once_before_the_folds_and_reports_progress():
    crops, truth = _coloured_crops(np.random.default_rng(2), {"a": (150, 60, 160), "b": (90, 90, 200)}, 9)
    messages = []
    config = cpu_config(folds=3, epochs=2, crop_size=24, pretrain_epochs=2)
    codes = encode_labels(list(truth))[0]
    probabilities = out_of_fold_probabilities(
        crops, codes, 2, config, progress=lambda done, total, text="": messages.append(text)
    )
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    pretraining = [text for text in messages if text.startswith("pretraining")]
    assert pretraining and messages.index(pretraining[-1]) < messages.index("training fold 1/3")


def test_pretraining_needs_epochs():
    crops, _ = _coloured_crops(np.random.default_rng(3), {"a": (150, 60, 160)}, 4)
    with pytest.raises(InputError, match="pretrain_epochs"):
        pretrain_crop_encoder(crops, cpu_config())


def test_real_crops_rank_flipped_labels_high(idb_cells):
    issues = find_label_issues(idb_cells[["image", "label"]], FAST)
    assert list(issues.columns[:5]) == ISSUE_COLUMNS
    assert issues["issue_score"].is_monotonic_decreasing
    merged = issues.merge(idb_cells, on="image")
    top = merged.head(8)
    assert top["flipped"].sum() >= 3
    flipped_suggestions = merged[merged["flipped"]]
    assert (flipped_suggestions["suggested"] == flipped_suggestions["true"]).mean() >= 0.75


def test_cli_writes_the_contract_table(tmp_path, idb_cells):
    cells = tmp_path / "cells.csv"
    idb_cells[["image", "label"]].to_csv(cells, index=False)
    out = tmp_path / "issues.csv"
    assert (
        main(["label-issues", "--cells", str(cells), "--out", str(out), "--folds", "3", "--epochs", "20"])
        == 0
    )
    issues = pd.read_csv(out)
    assert list(issues.columns[:5]) == ["image", "given", "suggested", "issue_score", "is_issue"]
    assert sorted(issues["image"]) == sorted(idb_cells["image"])
    assert issues["issue_score"].is_monotonic_decreasing


def _write_cells(tmp_path, rows: dict) -> str:
    path = tmp_path / "cells.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_cli_bad_inputs_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    cases = {
        "lacks column": {"image": ["a.png"], "file_label": ["x"]},
        "not found": {"image": ["m1.png", "m2.png", "m3.png", "m4.png"], "label": ["a", "a", "b", "b"]},
        "cannot be read": {
            "image": ["broken.png", "broken.png", "broken.png", "broken.png"],
            "label": ["a", "a", "b", "b"],
        },
        "single cell": {"image": ["broken.png"] * 3, "label": ["a", "a", "b"]},
        "no label": {"image": ["broken.png"] * 3, "label": ["a", None, "b"]},
    }
    for message, rows in cases.items():
        code = main(
            ["label-issues", "--cells", _write_cells(tmp_path, rows), "--out", str(tmp_path / "o.csv")]
        )
        error = capsys.readouterr().err
        assert code == 2
        assert message in error and "Traceback" not in error
    assert not (tmp_path / "o.csv").exists()


def test_one_class_is_refused():
    with pytest.raises(InputError, match="two classes"):
        encode_labels(["blast"] * 4)


def test_project_review_and_retrain_use_the_corrections(tmp_path, idb_cells):
    from napari_hematology.core.labels.review import (
        corrected_labels,
        retrain_project,
        review_queue,
        store_issues,
    )
    from napari_hematology.core.labels.store import AnnotationStore

    project = tmp_path / "project.sqlite"
    store_issues(project, find_label_issues(idb_cells[["image", "label"]], FAST), base=tmp_path)
    flipped = idb_cells[idb_cells["flipped"]]
    with AnnotationStore(project) as store:
        assert len(review_queue(store, "dr_a")) == len(idb_cells)
        for image, truth in zip(flipped["image"], flipped["true"], strict=True):
            store.set_label(image, truth, "dr_a")
        corrected = corrected_labels(store).set_index("cell")["label"]
    assert (corrected[flipped["image"]].to_numpy() == flipped["true"].to_numpy()).all()
    issues = retrain_project(project, FAST)
    assert set(issues["image"]) == set(idb_cells["image"])
    assert (
        issues.set_index("image").loc[flipped["image"], "given"].to_numpy() == flipped["true"].to_numpy()
    ).all()
