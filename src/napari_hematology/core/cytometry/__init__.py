"""Per-cell signal (flow and mass cytometry) analysis.

FCS reading, what values already are (raw, compensated, transformed) and their preprocessing, IDEC/VaDE
deep clustering, staged pipelines, soft labels from per-sample reference proportions, and results back
in CSV, FCS and AnnData.
"""

from napari_hematology.core.cytometry.batch import (
    Batch,
    decide_batch_preprocessing,
    read_batch,
    read_reference,
    sample_values,
)
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
    read_fcs_data_sets,
    transform,
    usable_channels,
)
from napari_hematology.core.cytometry.fitting import fit_clusterer
from napari_hematology.core.cytometry.naming import (
    DEFAULT_TABLE,
    MarkerTable,
    Naming,
    load_marker_table,
    name_clusters,
)
from napari_hematology.core.cytometry.scales import Preprocessing, apply_preprocessing, decide_preprocessing
from napari_hematology.core.cytometry.stage_config import (
    PipelineConfig,
    StageConfig,
    load_pipeline_config,
    pipeline_config_from_dict,
    single_stage_config,
)
from napari_hematology.core.cytometry.stages import (
    PipelineResult,
    apply_pipeline,
    load_pipeline,
    run_pipeline,
    save_pipeline,
)
from napari_hematology.core.cytometry.tables import (
    cell_table,
    cluster_assignments,
    final_populations,
    marker_table,
    populations_record,
    populations_summary,
    preprocessing_record,
    proportions_table,
    sample_proportions,
    scatter_coordinates,
    write_anndata,
    write_fcs_outputs,
    write_outputs,
)

__all__ = [
    "Batch",
    "ClusterConfig",
    "DEFAULT_TABLE",
    "MarkerTable",
    "Naming",
    "Clusterer",
    "FcsSample",
    "PipelineConfig",
    "PipelineResult",
    "Preprocessing",
    "StageConfig",
    "TRANSFORMS",
    "apply_pipeline",
    "apply_preprocessing",
    "cell_table",
    "channel_indices",
    "cluster_assignments",
    "compensate",
    "decide_batch_preprocessing",
    "decide_preprocessing",
    "default_channels",
    "final_populations",
    "fit_clusterer",
    "list_fcs",
    "load_clusterer",
    "load_marker_table",
    "load_pipeline",
    "load_pipeline_config",
    "marker_table",
    "name_clusters",
    "pipeline_config_from_dict",
    "populations_record",
    "populations_summary",
    "preprocessing_record",
    "proportions_table",
    "read_batch",
    "read_fcs",
    "read_fcs_data_sets",
    "read_reference",
    "run_pipeline",
    "sample_proportions",
    "sample_values",
    "save_pipeline",
    "scatter_coordinates",
    "single_stage_config",
    "transform",
    "usable_channels",
    "write_anndata",
    "write_fcs_outputs",
    "write_outputs",
]
