"""``ns-train unisem-splat``: the base splatting method every semantic method builds on."""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

import unisem_ns.ns.checkpoints  # noqa: F401  (registers the safe globals for torch.load)
from unisem_ns.ns.data import UnisemDatamanagerConfig
from unisem_ns.ns.optimizers import FusedAdamOptimizerConfig
from unisem_ns.ns.pipeline import UnisemPipelineConfig
from unisem_ns.ns.splat_model import UnisemSplatModelConfig
from unisem_ns.ns.trainer import UnisemTrainerConfig


def splat_optimizers(feature_lr: float = 2.5e-3) -> dict:
    """Splatfacto's optimizer settings plus the per-Gaussian feature group (fused Adam steps)."""
    adam = lambda lr: {"optimizer": FusedAdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}  # noqa: E731
    return {
        "means": {
            "optimizer": FusedAdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=30000),
        },
        "features_dc": adam(0.0025),
        "features_rest": adam(0.0025 / 20),
        "opacities": adam(0.05),
        "scales": adam(0.005),
        "quats": adam(0.001),
        "features_sem": adam(feature_lr),
        "camera_opt": {
            "optimizer": FusedAdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0),
        },
        "bilateral_grid": {
            "optimizer": FusedAdamOptimizerConfig(lr=2e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0),
        },
    }


unisem_splat = MethodSpecification(
    config=UnisemTrainerConfig(
        method_name="unisem-splat",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=500,
        steps_per_eval_all_images=1000,
        max_num_iterations=3000,
        mixed_precision=False,
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=UnisemPipelineConfig(
            datamanager=UnisemDatamanagerConfig(),
            model=UnisemSplatModelConfig(),
        ),
        optimizers=splat_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, websocket_host="127.0.0.1"),
        vis="viewer",
    ),
    description="Splatfacto on unisem_ns.render (CPU or CUDA) with a 16-d feature channel; default scene if no --data.",
)
