"""What every semantic method shares in Nerfstudio: the language-query field, its viewer controls, and
closed-set evaluation against ``gt/semantic`` in ``ns-eval``.

A method mixes in :class:`SemanticEvalMixin`, which declares :class:`~unisem_ns.capabilities.SemanticHead`, and
implements ``language_features(outputs) -> [H, W, D]`` (unit vectors in the cue encoder's space).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from unisem_ns.capabilities import SceneEvaluation, SemanticHead
from unisem_ns.language.encoders import make_text_encoder
from unisem_ns.language.query_field import LanguageQueryField
from unisem_ns.metrics.scene import SceneEvaluator
from unisem_ns.metrics.segmentation import semantic_segmentation_metrics


class ViewerQueryControls(nn.Module):
    """Two text boxes in ns-viewer: free-text queries (``;``-separated) and a closed label set.

    Nerfstudio's viewer collects ``ViewerElement``s from public attributes of the pipeline's modules, so the
    model holds this as ``self.query_controls``.
    """

    def __init__(self, field: LanguageQueryField, labels: List[str]):
        super().__init__()
        from nerfstudio.viewer.viewer_elements import ViewerText

        self._field = field
        self.queries_box = ViewerText("Queries (; separated)", "", cb_hook=self._on_queries)
        self.labels_box = ViewerText("Label set (; separated)", ";".join(labels), cb_hook=self._on_labels)

    def _on_queries(self, element) -> None:
        self._field.set_queries_from_text(element.value)

    def _on_labels(self, element) -> None:
        labels = [t.strip() for t in element.value.split(";") if t.strip()]
        self._field.set_labels(labels)


class SemanticEvalMixin(SemanticHead, SceneEvaluation):
    """Language queries in the viewer and mIoU/mAcc in ns-eval for a model with ``language_features``: per view,
    and pooled over the held-out views (the scene protocol, :mod:`unisem_ns.metrics.scene`) under UnisemPipeline."""

    def setup_semantics(self, metadata: Dict) -> None:
        self.text_encoder = make_text_encoder(metadata["cue_encoder"])
        # Label set: the scene's classes without "void" (id 0); predictions map back to class ids.
        self.class_names: List[str] = list(metadata.get("class_names") or [])
        self.eval_labels = [c for c in self.class_names[1:]] if self.class_names else []
        self.query_field = LanguageQueryField(self.text_encoder)
        if self.eval_labels:
            self.query_field.set_labels(self.eval_labels)
        self.query_controls = ViewerQueryControls(self.query_field, self.eval_labels)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera, obb_box=None) -> Dict[str, torch.Tensor]:
        outputs = super().get_outputs_for_camera(camera, obb_box=obb_box)
        if self.query_field is not None and (self.query_field.has_queries() or self.query_field.has_labels()):
            feats = self.language_features(outputs)
            outputs.update(self.query_field.query_outputs(feats, outputs["rgb"]))
        return outputs

    def make_scene_evaluator(self) -> SceneEvaluator:
        return SceneEvaluator(num_classes=len(self.class_names) if self.eval_labels else None, ignore_index=0)

    @torch.no_grad()
    def predict_classes(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[H, W] predicted class ids (1..C-1; never 0 = void) by argmax over the scene's label set."""
        if "segmentation_ids" in outputs and list(self.query_field.labels) == self.eval_labels:
            return outputs["segmentation_ids"] + 1  # already segmented over this label set while rendering
        return self.query_field.classify(self.language_features(outputs), self.eval_labels) + 1

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if "gt_semantic" in batch and self.eval_labels:
            gt = batch["gt_semantic"].to(self.device)
            pred = self.predict_classes(outputs)
            if self.scene_evaluator is not None:
                metrics.update(self.scene_evaluator.update(pred, gt))
            else:
                sem = semantic_segmentation_metrics(pred, gt, num_classes=len(self.class_names), ignore_index=0)
                metrics.update({"miou": sem["miou"], "macc": sem["macc"]})
            palette = self.query_field.palette(len(self.class_names)).to(self.device)
            images["semantic"] = torch.cat([palette[gt], palette[pred]], dim=1)
        return metrics, images
