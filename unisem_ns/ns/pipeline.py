"""The pipeline of every per-scene method: Nerfstudio's VanillaPipeline whose eval over all images reports the
scene's figures from :class:`~unisem_ns.metrics.scene.SceneEvaluator` (pooled over the held-out views, the same
protocol ``unisem-query`` reports) instead of only the mean of per-image figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Type

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from unisem_ns.capabilities import SceneEvaluation


@dataclass
class UnisemPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: UnisemPipeline)


class UnisemPipeline(VanillaPipeline):
    """``ns-eval`` (and the trainer's eval over all images) adds the model's scene evaluation when it has one: the
    model's per-image evaluation feeds the evaluator, and its pooled figures replace the per-image means of the
    same name (those stay as ``*_view_mean``)."""

    @torch.no_grad()
    def get_average_eval_image_metrics(self, step: Optional[int] = None, output_path=None, get_std: bool = False):
        model = self.model
        if not isinstance(model, SceneEvaluation):
            return super().get_average_eval_image_metrics(step=step, output_path=output_path, get_std=get_std)
        model.begin_scene_evaluation()
        try:
            metrics = super().get_average_eval_image_metrics(step=step, output_path=output_path, get_std=get_std)
            metrics.update(model.scene_evaluator.compute())
        finally:
            model.end_scene_evaluation()
        return metrics
