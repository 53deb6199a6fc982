import ast
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_fresh_python

import napari_hematology
from napari_hematology.core.errors import Cancelled, InputError, ModelFileError
from napari_hematology.core.registry import create_model, list_models, load_model, save_model
from napari_hematology.core.training import (
    TrainConfig,
    predict,
    seeded,
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


def test_training_is_repeatable_with_a_seed_whatever_the_callers_random_state():
    features, labels = _blobs()
    results = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        with seeded(7):
            model = create_model("mlp", in_features=4, out_features=2, hidden=[8], dropout=0.5)
        train(model, (features, labels), _cross_entropy, TrainConfig(epochs=2, seed=7, device="cpu"))
        results.append(predict(model, features))
    np.testing.assert_allclose(results[0], results[1])


def test_training_leaves_global_random_state_and_threads_alone():
    features, labels = _blobs()
    model = create_model("mlp", in_features=4, out_features=2, hidden=[8], dropout=0.5)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(5)
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    threads = torch.get_num_threads()
    train(model, (features, labels), _cross_entropy, TrainConfig(epochs=2, seed=7, device="cpu"))
    assert torch.initial_seed() == 123
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))
    assert torch.get_num_threads() == threads


def test_epoch_hook_is_called_once_per_epoch_and_can_stop_training():
    features, labels = _blobs()
    model = create_model("mlp", in_features=4, out_features=2, hidden=[8])
    calls = []

    def hook(epoch, net, history):
        calls.append((epoch, net, len(history.loss)))

    history = train(model, (features, labels), _cross_entropy, TrainConfig(epochs=4, device="cpu"),
                    on_epoch_end=hook)
    assert calls == [(epoch, model, epoch + 1) for epoch in range(4)]
    assert len(history.loss) == 4
    history = train(model, (features, labels), _cross_entropy, TrainConfig(epochs=10, device="cpu"),
                    on_epoch_end=lambda epoch, net, history: epoch == 2)
    assert len(history.loss) == 3


def test_early_stopping_waits_patience_epochs_without_improvement():
    features, labels = _blobs()
    model = create_model("mlp", in_features=4, out_features=2, hidden=[8])
    scores = iter([0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.9])
    config = TrainConfig(epochs=7, device="cpu", patience=3, monitor="score", higher_is_better=True)
    history = train(model, (features, labels), _cross_entropy, config,
                    validate=lambda net: {"score": next(scores)})
    assert [metrics["score"] for metrics in history.validation] == [0.5, 0.7, 0.6, 0.7, 0.65]
    unlimited = train(model, (features, labels), _cross_entropy, TrainConfig(epochs=7, device="cpu"))
    assert len(unlimited.loss) == 7
    with pytest.raises(ValueError, match="validate"):
        train(model, (features, labels), _cross_entropy, config)


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
    inputs = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    out = predict(model, inputs, batch_size=3)
    assert out.shape == (10, 2)
    np.testing.assert_allclose(out, predict(model, inputs, batch_size=256), atol=1e-6)
    assert str(select_device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="Unknown device"):
        select_device("tpu")


def test_predict_on_a_gpu_equals_the_cpu():
    import torch

    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else None
    if device is None:
        pytest.skip("no CUDA or MPS device here")
    model = create_model("mlp", in_features=4, out_features=2)
    inputs = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)  # several GPU batches
    on_cpu = predict(model, inputs, batch_size=256)
    on_device = predict(model.to(device), inputs, batch_size=256)
    np.testing.assert_allclose(on_device, on_cpu, atol=1e-4)



PACKAGE_ROOT = Path(napari_hematology.__file__).parent


def _imported_modules(path):
    """Every name an import in ``path`` brings in, dotted in full (``from a import b`` gives ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_models_import_nothing_from_the_rest_of_the_plugin():
    files = sorted((PACKAGE_ROOT / "models").glob("*.py"))
    assert len(files) >= 9
    upward = ("napari_hematology.core", "napari_hematology.widgets", "napari_hematology.cli")
    for path in files:
        offending = sorted(name for name in _imported_modules(path) if name.startswith(upward))
        assert not offending, f"{path.name} imports {offending}"


def test_registry_reaches_the_models_only_through_the_package_entry_point():
    imported = _imported_modules(PACKAGE_ROOT / "core" / "registry.py")
    model_files = (PACKAGE_ROOT / "models").glob("*.py")
    model_modules = {f"napari_hematology.models.{path.stem}" for path in model_files}
    assert "napari_hematology.models" in imported
    assert not imported & model_modules
    assert not any(name.split(".")[0] in {"importlib", "pkgutil"} for name in imported)


def test_importing_the_registry_does_not_import_torch():
    check = "import sys, napari_hematology.core.registry; print('torch' in sys.modules)"
    assert run_fresh_python(check).strip() == "False"


def test_models_package_registers_every_model_and_rejects_unknown_names():
    import napari_hematology.models as models

    expected = {"attention_mil", "cell_classifier", "coteaching_pair", "crop_cnn", "expression_model", "idec",
                "mlp", "vade"}
    assert set(models.list_models()) == expected
    model = models.build_model("mlp", in_features=4, out_features=2)
    assert (model.registry_name, model.registry_config) == ("mlp", {"in_features": 4, "out_features": 2})
    with pytest.raises(KeyError, match="Unknown model 'no-such-model'"):
        models.build_model("no-such-model")
    with pytest.raises(InputError, match="Unknown model 'no-such-member'"):
        create_model("coteaching_pair", member="no-such-member")


def test_expression_model_names_match_the_command_line_choices():
    from napari_hematology.core.expression import choices
    from napari_hematology.models import expression

    assert expression.ENCODERS == choices.ENCODERS
    assert expression.HEADS == choices.HEADS
    assert expression.HEAD_INPUTS == choices.HEAD_INPUTS
    assert expression.GENE_INPUT_HEADS == choices.GENE_INPUT_HEADS


def test_a_slice_of_a_layer_stack_model_keeps_its_layers_and_keys():
    model = create_model("crop_cnn", out_features=3, widths=[4])
    body = model[:-1]
    assert type(body) is torch.nn.Sequential
    head = f"{len(model) - 1}."
    assert list(body.state_dict()) == [key for key in model.state_dict() if not key.startswith(head)]
    assert body(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
