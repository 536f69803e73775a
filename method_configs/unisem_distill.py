"""``ns-train unisem-distill``: the feature-distillation baseline every semantic method must beat."""

from __future__ import annotations

import dataclasses

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from method_configs.unisem_splat import unisem_splat
from unisem_ns.ns.data import UnisemCueDatamanagerConfig
from unisem_ns.ns.distill_model import UnisemDistillModelConfig

_base = unisem_splat.config
unisem_distill = MethodSpecification(
    config=dataclasses.replace(
        _base,
        method_name="unisem-distill",
        pipeline=dataclasses.replace(
            _base.pipeline,
            datamanager=UnisemCueDatamanagerConfig(),
            model=UnisemDistillModelConfig(),
        ),
        optimizers={
            **_base.optimizers,
            "feature_decoder": {"optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15), "scheduler": None},
        },
    ),
    description="Feature-distillation baseline: unisem-splat's 16-d feature decoded to the cue space, cosine + L1 to the 2D cues.",
)
