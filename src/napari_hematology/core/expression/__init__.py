"""Gene-expression backend: loading, preprocessing, self-supervised encoders, heads and zero-shot transfer.

Typical use::

    data = load_expression("cells.h5ad", label_key="cell_type")
    model = fit_expression_model(data, "cell_type", ExpressionConfig(encoder="scarf", head="gcn"))
    save_expression_model(model, "my_model")
    table = predict_expression(load_expression_model("my_model"), load_expression("other.h5ad"))
"""

from importlib import import_module

# each public name and the module it lives in: imported on first use, so that the command line and the
# Expression dock can read the choices (``choices``) without loading pandas and the models
_WHERE = {
    "ExpressionClassifier": "classifier",
    "ExpressionConfig": "classifier",
    "class_probabilities": "classifier",
    "embed_expression": "classifier",
    "fit_expression_model": "classifier",
    "load_expression_model": "classifier",
    "predict_expression": "classifier",
    "save_expression_model": "classifier",
    "ExpressionData": "data",
    "annotation_columns": "data",
    "labels_of": "data",
    "load_expression": "data",
    "make_expression_data": "data",
    "PreprocessConfig": "preprocessing",
    "Preprocessor": "preprocessing",
}

__all__ = [
    "ExpressionClassifier",
    "ExpressionConfig",
    "ExpressionData",
    "PreprocessConfig",
    "Preprocessor",
    "annotation_columns",
    "class_probabilities",
    "embed_expression",
    "fit_expression_model",
    "labels_of",
    "load_expression",
    "load_expression_model",
    "make_expression_data",
    "predict_expression",
    "save_expression_model",
]


def __getattr__(name: str):
    """Import a public name's module when the name is first asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
