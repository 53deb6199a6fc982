import json

import numpy as np
import pytest
import torch

from napari_hematology.core.errors import Cancelled, InputError, ModelFileError
from napari_hematology.core.registry import create_model, list_models, load_model, save_model
from napari_hematology.core.training import (
    TrainConfig,
    predict,
    seed_everything,
    select_device,
    train,
)


def _blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = rng.normal(size=(n, 4)) + labels[:, None] * 2.5
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def _cross_entropy(model, batch, epoch):
    features, labels = batch
    return torch.nn.functional.cross_entropy(model(features), labels)


def test_registry_lists_and_creates_models():
    assert "mlp" in list_models()
    model = create_model("mlp", in_features=4, out_features=3, hidden=[8])
    assert model(torch.zeros(2, 4)).shape == (2, 3)
    with pytest.raises(InputError, match="Unknown model"):
        create_model("no-such-model")


def test_save_and_load_round_trip(tmp_path):
    model = create_model("mlp", in_features=4, out_features=2, hidden=[8])
    save_model(model, tmp_path / "m", {"classes": ["normal", "blast"]})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["name"] == "mlp"
    loaded, metadata = load_model(tmp_path / "m")
    assert metadata["classes"] == ["normal", "blast"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_load_refuses_foreign_corrupt_and_newer_models(tmp_path):
    model = create_model("mlp", in_features=4, out_features=2)
    folder = save_model(model, tmp_path / "m")
    with pytest.raises(ModelFileError, match="is needed here"):
        load_model(folder, expected_name="cell_classifier")
    with pytest.raises(ModelFileError, match="not a napari-hematology model folder"):
        load_model(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(folder)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="newer"):
        load_model(folder)


def test_load_refuses_weights_of_another_shape(tmp_path):
    small = save_model(create_model("mlp", in_features=4, out_features=2), tmp_path / "small")
    big = save_model(create_model("mlp", in_features=6, out_features=2), tmp_path / "big")
    (small / "model.safetensors").write_bytes((big / "model.safetensors").read_bytes())
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(small)


def test_training_learns_separable_data_and_reports_progress():
    features, labels = _blobs()
    model = create_model("mlp", in_features=4, out_features=2, hidden=[16])
    calls = []
    history = train(
        model,
        (features, labels),
        _cross_entropy,
        TrainConfig(epochs=15, batch_size=32, learning_rate=1e-2, device="cpu"),
        progress=lambda done, total, message: calls.append((done, total)),
        validate=lambda m: {"accuracy": float((m(features).argmax(1) == labels).float().mean())},
    )
    assert history.loss[-1] < history.loss[0]
    assert history.validation[-1]["accuracy"] > 0.9
    assert calls[-1][0] == calls[-1][1] == 15 * 7


def test_training_is_repeatable_with_a_seed():
    features, labels = _blobs()
    results = []
    for _ in range(2):
        seed_everything(7)
        model = create_model("mlp", in_features=4, out_features=2, hidden=[8])
        train(model, (features, labels), _cross_entropy, TrainConfig(epochs=2, seed=7, device="cpu"))
        results.append(predict(model, features))
    np.testing.assert_allclose(results[0], results[1])


def test_training_can_be_cancelled():
    features, labels = _blobs()
    model = create_model("mlp", in_features=4, out_features=2)
    steps = []
    with pytest.raises(Cancelled):
        train(
            model,
            (features, labels),
            _cross_entropy,
            TrainConfig(epochs=50, batch_size=8, device="cpu"),
            progress=lambda done, total, message: steps.append(done),
            should_stop=lambda: len(steps) >= 3,
        )
    assert len(steps) == 3


def test_predict_batches_and_device_choice():
    model = create_model("mlp", in_features=4, out_features=2)
    out = predict(model, np.zeros((10, 4), np.float32), batch_size=3)
    assert out.shape == (10, 2)
    assert str(select_device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="Unknown device"):
        select_device("tpu")
