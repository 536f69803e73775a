"""econSG (ICLR 2025, Zhang & Lee): the algorithm core, pure PyTorch / numpy (no nerfstudio import).

* :mod:`unisem_ns.econsg.crr` — Confidence-guided Region Regularisation (steps a, a', b, c, d) and the
  feature-level CRR.
* :mod:`unisem_ns.econsg.autoencoder` — the D -> d latent autoencoder, its paper / code losses and training.
* :mod:`unisem_ns.econsg.prepare` — :func:`prepare_econsg`, the cached per-scene preprocessing pipeline.

Labels are 0-based class indices, -1 = unlabelled (files: +1,
0 = ignore).
"""

from unisem_ns.econsg.autoencoder import (
    AEConfig,
    LatentAutoencoder,
    autoencoder_loss,
    encode_in_batches,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from unisem_ns.econsg.crr import (
    CRRConfig,
    CRRResult,
    MVView,
    PointLabels3D,
    accumulate_3d_labels,
    boundary_weights,
    confidence,
    crr_view,
    fill_regions,
    high_confidence,
    labels_from_png,
    labels_to_png,
    multiview_labels,
    regularize_features,
    reproject_labels,
    surface_voxels,
    thresholds,
    vote_mask_labels,
)
from unisem_ns.econsg.prepare import EconSGCache, EconSGPrepConfig, prepare_econsg

__all__ = [
    "AEConfig",
    "LatentAutoencoder",
    "autoencoder_loss",
    "encode_in_batches",
    "load_autoencoder",
    "save_autoencoder",
    "train_autoencoder",
    "CRRConfig",
    "CRRResult",
    "MVView",
    "PointLabels3D",
    "accumulate_3d_labels",
    "boundary_weights",
    "confidence",
    "crr_view",
    "fill_regions",
    "high_confidence",
    "labels_from_png",
    "labels_to_png",
    "multiview_labels",
    "regularize_features",
    "reproject_labels",
    "surface_voxels",
    "thresholds",
    "vote_mask_labels",
    "EconSGCache",
    "EconSGPrepConfig",
    "prepare_econsg",
]
