"""Evaluation metrics shared by every method (values returned as Python floats for ns-eval).

Imports only torch and numpy; torchmetrics (LPIPS) is imported lazily inside :func:`lpips`.

* :mod:`.segmentation`: :class:`ConfusionMatrix`, :func:`semantic_segmentation_metrics` (mIoU / mAcc, macro and
  micro, ``ignore_index``).
* :mod:`.masks`: :func:`mask_iou`, :func:`boundary_iou`, LangSplat / GSemSplat query evaluation
  (:func:`postprocess_relevancy`, :func:`query_iou`, :func:`localization_hit`).
* :mod:`.open_vocab`: GSemSplat / LangSplat multi-head query evaluation of one image (:func:`evaluate_queries`),
  scene totals (:func:`aggregate_results`), GSemSplat's released evaluation layout (:func:`load_gsemsplat_scene`,
  :func:`evaluate_gsemsplat_scene`).
* :mod:`.panoptic`: scene-level :func:`panoptic_quality` / :class:`PanopticAccumulator`.
* :mod:`.depth`: :func:`depth_metrics` (AbsRel, RMSE, delta; optional median / trimmed-LSQ alignment),
  :func:`align_depth`.
* :mod:`.image`: :func:`psnr`, :func:`ssim`, :func:`lpips` (None without local AlexNet weights).
"""

from .depth import align_depth, depth_metrics
from .image import image_metrics, lpips, lpips_available, psnr, ssim
from .masks import (
    boundary_iou,
    box_mean,
    localization_hit,
    mask_boundary,
    mask_iou,
    mode_filter,
    postprocess_relevancy,
    query_iou,
)
from .open_vocab import (
    aggregate_results,
    evaluate_gsemsplat_scene,
    evaluate_queries,
    load_gsemsplat_scene,
    relevancy_maps,
)
from .panoptic import PanopticAccumulator, panoptic_quality
from .segmentation import ConfusionMatrix, semantic_segmentation_metrics

__all__ = [
    "depth_metrics",
    "align_depth",
    "psnr",
    "ssim",
    "lpips",
    "lpips_available",
    "image_metrics",
    "mask_iou",
    "mask_boundary",
    "boundary_iou",
    "box_mean",
    "mode_filter",
    "postprocess_relevancy",
    "query_iou",
    "localization_hit",
    "evaluate_queries",
    "aggregate_results",
    "relevancy_maps",
    "load_gsemsplat_scene",
    "evaluate_gsemsplat_scene",
    "PanopticAccumulator",
    "panoptic_quality",
    "ConfusionMatrix",
    "semantic_segmentation_metrics",
]
