"""Per-cell signal (flow and mass cytometry) analysis.

FCS reading, transforms, IDEC/VaDE deep clustering, staged pipelines and soft labels from per-sample
reference proportions.
"""

from napari_hematology.core.cytometry.cluster_config import ClusterConfig
from napari_hematology.core.cytometry.clusterer import Clusterer, load_clusterer
from napari_hematology.core.cytometry.fcs import (
    TRANSFORMS,
    FcsSample,
    channel_indices,
    compensate,
    default_channels,
    list_fcs,
    read_fcs,
    transform,
)
from napari_hematology.core.cytometry.fitting import fit_clusterer
from napari_hematology.core.cytometry.stages import (
    PipelineConfig,
    PipelineResult,
    StageConfig,
    apply_pipeline,
    load_pipeline,
    load_pipeline_config,
    pipeline_config_from_dict,
    read_batch,
    read_reference,
    run_pipeline,
    sample_values,
    save_pipeline,
    single_stage_config,
)
from napari_hematology.core.cytometry.tables import (
    cell_table,
    final_populations,
    proportions_table,
    sample_proportions,
    scatter_coordinates,
    write_outputs,
)

__all__ = [
    "TRANSFORMS",
    "ClusterConfig",
    "Clusterer",
    "FcsSample",
    "PipelineConfig",
    "PipelineResult",
    "StageConfig",
    "apply_pipeline",
    "cell_table",
    "channel_indices",
    "compensate",
    "default_channels",
    "final_populations",
    "fit_clusterer",
    "list_fcs",
    "load_clusterer",
    "load_pipeline",
    "load_pipeline_config",
    "pipeline_config_from_dict",
    "proportions_table",
    "read_batch",
    "read_fcs",
    "read_reference",
    "run_pipeline",
    "sample_proportions",
    "sample_values",
    "save_pipeline",
    "scatter_coordinates",
    "single_stage_config",
    "transform",
    "write_outputs",
]
