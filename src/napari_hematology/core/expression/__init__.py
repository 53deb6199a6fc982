"""Gene-expression backend: loading, preprocessing, self-supervised encoders, heads and zero-shot transfer.

Typical use::

    data = load_expression("cells.h5ad", label_key="cell_type")
    model = fit_expression_model(data, "cell_type", ExpressionConfig(encoder="scarf", head="gcn"))
    save_expression_model(model, "my_model")
    table = predict_expression(load_expression_model("my_model"), load_expression("other.h5ad"))
"""

from napari_hematology.core.expression.classifier import (
    ExpressionClassifier,
    ExpressionConfig,
    class_probabilities,
    embed_expression,
    fit_expression_model,
    load_expression_model,
    predict_expression,
    save_expression_model,
)
from napari_hematology.core.expression.data import (
    ExpressionData,
    annotation_columns,
    labels_of,
    load_expression,
    make_expression_data,
)
from napari_hematology.core.expression.preprocessing import PreprocessConfig, Preprocessor

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
