"""``ns-train unisem-panoptic``: econSG's semantic latent and Unified-Lift's instance codebook in one Gaussian
model, trained together from the same SAM masks and CLIP features (docs/methods/panoptic.md)."""

from __future__ import annotations

import dataclasses

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from method_configs.unisem_splat import splat_optimizers, unisem_splat
from unisem_ns.ns.panoptic_model import PanopticDatamanagerConfig, PanopticModelConfig
from unisem_ns.ns.pipeline import UnisemPipelineConfig

_base = unisem_splat.config
unisem_panoptic = MethodSpecification(
    config=dataclasses.replace(
        _base,
        method_name="unisem-panoptic",
        pipeline=UnisemPipelineConfig(
            datamanager=PanopticDatamanagerConfig(),
            model=PanopticModelConfig(),
        ),
        optimizers={
            # one feature parameter holds both channels; econSG and Unified-Lift both train theirs at lr 2.5e-3
            **splat_optimizers(feature_lr=2.5e-3),
            "codebook": {"optimizer": AdamOptimizerConfig(lr=5e-4), "scheduler": None},  # Unified-Lift's Adam
        },
    ),
    description="Panoptic Gaussians: econSG's semantic latent (CRR, contextual init, latent AE) and Unified-Lift's "
    "16-d instance feature with a global codebook in one model; every pixel gets (class, instance). Needs "
    "language_features/ and object_mask/ (unisem-preprocess).",
)
