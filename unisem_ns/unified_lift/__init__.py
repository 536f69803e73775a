"""Unified-Lift (CVPR 2025, Zhu et al.): end-to-end object-level lifting with a global codebook.

Pure PyTorch / numpy / scipy core (no nerfstudio import), docs/methods/unified_lift.md:

* :mod:`.contrastive`: :func:`sample_pixels`, prototype InfoNCE :func:`contrastive_loss`, :func:`norm_regulariser`.
* :mod:`.noise_filter`: :func:`label_confidence` (uncertainty map -> keep mask).
* :mod:`.id_mapping`: :func:`area_aware_assignment` (per-view Hungarian SAM id -> codebook id).
* :mod:`.codebook`: :class:`Codebook`, :func:`class_loss`, :func:`concentration_loss`,
  :class:`UnifiedLiftLossConfig`, :func:`unified_lift_losses` (everything for one view),
  :func:`drop_duplicate_codes` (inference).
* :mod:`.edge_refine`: :func:`edge_aware_argmax` (inference: id boundaries snapped to the render's colour edges),
  :func:`boundary_band`.
* :mod:`.knn_regulariser`: :func:`knn_feature_regulariser` (3D kNN loss on Gaussian features, training).
* :mod:`.clustering`: HDBSCAN baseline (:func:`cluster_gaussian_features`, :func:`assign_pixels`).
* :mod:`.export`: instance PLY (:func:`export_instance_ply`, :func:`read_instance_ply`).
* :mod:`.instance_head`: the instance capability as config + state + functions (codebook, code usage, live codes,
  language / class accumulation per code, instance maps, export), shared by Unified-Lift and the panoptic model.
"""

from .clustering import assign_pixels, centre_similarity, cluster_centres, cluster_gaussian_features
from .codebook import (
    Codebook,
    UnifiedLiftLossConfig,
    class_loss,
    concentration_loss,
    drop_duplicate_codes,
    unified_lift_losses,
)
from .contrastive import contrastive_loss, mask_prototypes, norm_regulariser, sample_pixels, unit_features
from .edge_refine import boundary_band, edge_aware_argmax
from .export import InstancePly, export_instance_ply, instance_colours, read_instance_ply
from .id_mapping import area_aware_assignment
from .instance_head import InstanceHeadConfig, InstanceHeadState
from .knn_regulariser import knn_feature_regulariser, nearest_neighbours
from .noise_filter import label_confidence

__all__ = [
    "assign_pixels",
    "centre_similarity",
    "cluster_centres",
    "cluster_gaussian_features",
    "Codebook",
    "UnifiedLiftLossConfig",
    "class_loss",
    "concentration_loss",
    "drop_duplicate_codes",
    "unified_lift_losses",
    "contrastive_loss",
    "mask_prototypes",
    "norm_regulariser",
    "sample_pixels",
    "unit_features",
    "boundary_band",
    "edge_aware_argmax",
    "InstancePly",
    "export_instance_ply",
    "instance_colours",
    "read_instance_ply",
    "area_aware_assignment",
    "InstanceHeadConfig",
    "InstanceHeadState",
    "knn_feature_regulariser",
    "nearest_neighbours",
    "label_confidence",
]
