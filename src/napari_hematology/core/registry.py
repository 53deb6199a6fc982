"""Create, save and load registry models for images, expression and signal data.

The architectures and their builder table live in the leaf package :mod:`napari_hematology.models`
(``@register_model("cell_classifier")`` there); this module only reaches down into it. ``create_model``
builds one from a name and keyword config; ``save_model`` writes ``model.safetensors`` plus
``config.json`` (name, config and free-form metadata such as class names); ``load_model`` rebuilds the
architecture from the JSON and loads the weights without unpickling anything.

The models package (and torch with it) is imported on first use, not when this module is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_hematology.core.errors import InputError, ModelFileError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def list_models() -> list[str]:
    """Names of all registered architectures."""
    from napari_hematology import models

    return models.list_models()


def create_model(name: str, **config: Any):
    """Build a registered model.

    Args:
        name: Registry name (see :func:`list_models`).
        **config: Keyword arguments of the builder; kept so the model can be saved and rebuilt.

    Returns:
        The ``torch.nn.Module``, with ``registry_name`` and ``registry_config`` attributes set.

    Raises:
        InputError: No model has that name (nor the member model it names, for a co-teaching pair).

    """
    from napari_hematology import models

    try:
        return models.build_model(name, **config)
    except models.UnknownModelError as error:
        raise InputError(str(error)) from error


def save_model(model, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save a registry model as ``model.safetensors`` plus ``config.json``.

    Args:
        model: A module made by :func:`create_model`.
        directory: Folder to write to (created if needed).
        metadata: JSON-serialisable extras (class names, preprocessing, metrics).

    Returns:
        The folder.

    """
    from safetensors.torch import save_file

    if not hasattr(model, "registry_name"):
        raise ValueError("Only models made with create_model() can be saved through the registry.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config = {
        "format_version": FORMAT_VERSION,
        "name": model.registry_name,
        "config": model.registry_config,
        "metadata": metadata or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_json_default))
    return directory


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """Read and check a model folder's ``config.json`` without loading weights.

    Raises:
        ModelFileError: The folder is not a napari-hematology model, or is from a newer version.

    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir() or not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelFileError(
            f"{directory} is not a napari-hematology model folder (it needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}). Train one, or point to the folder a training command wrote."
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{config_path}: corrupt model config ({error}).") from error
    if not isinstance(config, dict) or "name" not in config:
        raise ModelFileError(f"{config_path}: not a napari-hematology model config (no 'name').")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{directory} was saved by a newer napari-hematology (format {config['format_version']}); "
            "upgrade the plugin to load it."
        )
    return config


def load_model(directory: str | Path, expected_name: str | None = None, device: str = "cpu"):
    """Load a model saved by :func:`save_model`.

    Args:
        directory: Model folder.
        expected_name: If given, refuse models of another architecture.
        device: Where to put the weights.

    Returns:
        ``(model, metadata)``, the model in eval mode.

    Raises:
        ModelFileError: Missing, corrupt, foreign or mismatched model files.

    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_model_config(directory)
    if expected_name is not None and config["name"] != expected_name:
        raise ModelFileError(
            f"{directory} holds a {config['name']!r} model, but a {expected_name!r} model is needed here."
        )
    try:
        model = create_model(config["name"], **config.get("config", {}))
    except InputError as error:
        raise ModelFileError(f"{directory}: {error}") from error
    try:
        state = load_file(str(Path(directory) / WEIGHTS_FILE), device=device)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise ModelFileError(
            f"{directory}: weights do not fit the {config['name']!r} architecture or are corrupt ({error})."
        ) from error
    model.to(device).eval()
    return model, config.get("metadata", {})
