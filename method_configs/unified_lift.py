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


def _with_model(spec: MethodSpecification, name: str, description: str, max_iterations=None, **model) -> MethodSpecification:
    """A named variant of ``spec``: other model settings (and optionally another length), the same pipeline."""
    cfg = spec.config
    pipeline = dataclasses.replace(cfg.pipeline, model=dataclasses.replace(cfg.pipeline.model, **model))
    extra = {} if max_iterations is None else {"max_num_iterations": max_iterations}
    return MethodSpecification(
        config=dataclasses.replace(cfg, method_name=name, pipeline=pipeline, **extra), description=description
    )


unified_lift_cluster = _with_model(
    unified_lift,
    "unified-lift-cluster",
    "Unified-Lift's clustering baseline: contrastive features only (no codebook), instances by HDBSCAN over "
    "rendered features of the training views.",
    inference="cluster",
    losses=dataclasses.replace(UnifiedLiftModelConfig().losses, use_codebook=False),
)

unified_lift_paper = _with_model(
    unified_lift,
    "unified-lift-paper",
    "Unified-Lift as its release trains it (GPU length): 30k iterations, densification until 10k, the paper's "
    "feature init, every code competing at inference, plain argmax, no kNN regulariser.",
    max_iterations=30000,
    stop_split_at=10000,
    feature_init_scale=1.0,
    live_code_min_views=0.0,
    duplicate_code_cos=1.0,
    refine_radius=0,
    knn_feature_weight=0.0,
)
