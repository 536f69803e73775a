"""Optimizer configs for the per-Gaussian parameter groups."""

from __future__ import annotations

from dataclasses import dataclass

from nerfstudio.engine.optimizers import AdamOptimizerConfig


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """Adam with torch's fused kernel: one pass over each parameter per step instead of a dozen element-wise
    ops. Same update rule; on CPU a step over a few hundred thousand Gaussians is several times faster."""

    fused: bool = True
    """Use torch's fused Adam (CPU and CUDA); False falls back to the per-op implementation."""
