"""``ns-train unified-lift``: contrastive Gaussian features and a global object codebook (no clustering)."""

from __future__ import annotations

import dataclasses

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from method_configs.unisem_splat import splat_optimizers, unisem_splat
from unisem_ns.ns.unified_lift_model import (
    UnifiedLiftDatamanagerConfig,
    UnifiedLiftModelConfig,
    UnifiedLiftPipelineConfig,
)

_base = unisem_splat.config
unified_lift = MethodSpecification(
    config=dataclasses.replace(
        _base,
        method_name="unified-lift",
        pipeline=UnifiedLiftPipelineConfig(
            datamanager=UnifiedLiftDatamanagerConfig(),
            model=UnifiedLiftModelConfig(),
        ),
        optimizers={
            **splat_optimizers(feature_lr=2.5e-3),  # Unified-Lift: object feature lr 2.5e-3
            "codebook": {"optimizer": AdamOptimizerConfig(lr=5e-4), "scheduler": None},  # its own Adam, lr 5e-4
        },
    ),
    description="Unified-Lift: contrastive 16-d Gaussian features + a 256-entry object codebook; instance id = "
    "argmax codebook similarity. Needs object_mask/ (raw SAM ids per view are fine).",
)
