"""``ns-train gsemsplat``: two unposed views -> semantic Gaussians in one pass (GSemSplat, CPU scale).

Registered with the entry point ``gsemsplat = "feedforward.gsemsplat.method_config:gsemsplat"`` (or
``NERFSTUDIO_METHOD_CONFIGS="gsemsplat=feedforward.gsemsplat.method_config:gsemsplat"``). The trainer settings
are ``unisem-feedforward``'s; the optimiser is Adam with the release's gradient-norm clip 0.5 [C] at lr 1e-3 [R]
for the tiny from-scratch model (release: 1e-5 on a frozen MASt3R), 1000 steps.
"""

from __future__ import annotations

import dataclasses

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from feedforward.gsemsplat.ns_pipeline import (GSemSplatDataManagerConfig, GSemSplatModelConfig,
                                               GSemSplatPipelineConfig)
from feedforward.method_config import unisem_feedforward

STEPS = 1000

gsemsplat = MethodSpecification(
    config=dataclasses.replace(
        unisem_feedforward.config,
        method_name="gsemsplat",
        max_num_iterations=STEPS,
        pipeline=GSemSplatPipelineConfig(datamanager=GSemSplatDataManagerConfig(), model=GSemSplatModelConfig()),
        optimizers={
            "predictor": {
                "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-8, weight_decay=0.0, max_norm=0.5),
                "scheduler": CosineDecaySchedulerConfig(warm_up_end=50, learning_rate_alpha=0.01, max_steps=STEPS),
            },
        },
    ),
    description="GSemSplat: two unposed views -> semantic Gaussians (region + context latents), Splatt3R geometry.",
)
