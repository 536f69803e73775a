"""``unisem-distill``: the feature-distillation baseline (Feature-3DGS style).

unisem-splat's 16-d rendered feature is decoded per pixel by a small MLP into the cue encoder's space and
pulled toward the 2D language cues with cosine + L1 losses. Every semantic method must beat this baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
import torch.nn.functional as F
from torch import nn

from unisem_ns.ns.semantic import SemanticEvalMixin
from unisem_ns.ns.splat_model import UnisemSplatModel, UnisemSplatModelConfig


@dataclass
class UnisemDistillModelConfig(UnisemSplatModelConfig):
    """unisem-splat plus a per-pixel decoder from the rendered feature to the cue encoder's space."""

    _target: Type = field(default_factory=lambda: UnisemDistillModel)
    feature_dim: int = 16
    """Rendered per-Gaussian feature width (the latent the decoder reads)."""
    decoder_hidden: int = 64
    """Hidden width of the 1x1 decoder MLP (latent -> encoder space)."""
    feature_loss_weight: float = 0.5
    """Weight of the distillation loss next to the photometric loss. [R]"""
    cosine_weight: float = 1.0
    """Weight of (1 - cosine) inside the distillation loss."""
    l1_weight: float = 1.0
    """Weight of the L1 distance inside the distillation loss."""
    cue_level: int = 0
    """Which level of the LangSplat-layout cue to distil (0 = default level)."""


class UnisemDistillModel(SemanticEvalMixin, UnisemSplatModel):
    config: UnisemDistillModelConfig
    method_name = "unisem-distill"

    def populate_modules(self):
        super().populate_modules()
        cue_dim = int(self.kwargs["metadata"]["cue_encoder"]["dim"])
        self.feature_decoder = nn.Sequential(
            nn.Linear(self.config.feature_dim, self.config.decoder_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.config.decoder_hidden, cue_dim),
        )
        self.setup_semantics(self.kwargs["metadata"])

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        groups = super().get_param_groups()
        groups["feature_decoder"] = list(self.feature_decoder.parameters())
        return groups

    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-pixel features in the cue encoder's space, [H, W, D], unit norm."""
        return F.normalize(self.feature_decoder(outputs["features"]), dim=-1)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        if "lang_seg" not in batch or not self.training:
            return losses
        seg = batch["lang_seg"][self.config.cue_level].to(self.device)  # [H, W]
        feats = batch["lang_feats"].to(self.device).float()  # [K, D]
        valid = seg >= 0
        if not valid.any():
            return losses
        pred = self.feature_decoder(outputs["features"][valid])  # [M, D]
        target = F.normalize(feats[seg[valid]], dim=-1)
        cos = 1.0 - F.cosine_similarity(pred, target, dim=-1).mean()
        l1 = (F.normalize(pred, dim=-1) - target).abs().sum(-1).mean()
        losses["feature_loss"] = self.config.feature_loss_weight * (
            self.config.cosine_weight * cos + self.config.l1_weight * l1
        )
        return losses
