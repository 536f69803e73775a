"""What a model can answer, declared: the semantic head and the instance head.

Tools (``unisem-query``, ``unisem-export-instances``, ``ns-eval``, the viewer) ask ``isinstance(model,
SemanticHead)`` / ``isinstance(model, InstanceHead)`` instead of probing for attributes, so a method states its
capabilities in its class line and a missing method is an error when the class is instantiated, not a silent
"this run answers nothing". A panoptic model is both. No Nerfstudio import: the feed-forward models use these
too.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch

if TYPE_CHECKING:
    from unisem_ns.language.query_field import LanguageQueryField

__all__ = ["SemanticHead", "InstanceHead", "SceneEvaluation", "FeatureChannelsHead", "PanopticHead"]


class SemanticHead(abc.ABC):
    """Per-pixel features in a text encoder's space: text queries and closed-set labels.

    A model sets, when it is built:
        query_field: the :class:`~unisem_ns.language.query_field.LanguageQueryField` answering queries, or None
            when its scene had no language cues (the model then answers no text queries).
        class_names: the scene's class names, id 0 = void (empty when the scene has no ``gt/classes.json``).
        eval_labels: the label set of closed-set segmentation (``class_names[1:]`` unless the user sets one).
    """

    query_field: Optional["LanguageQueryField"]
    class_names: List[str]
    eval_labels: List[str]

    @abc.abstractmethod
    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[H, W, D] unit features in the cue encoder's space, from one view's rendered ``outputs``."""

    @property
    def answers_text_queries(self) -> bool:
        return self.query_field is not None


class InstanceHead(abc.ABC):
    """Object instances with ids that agree across views (one id per object in the whole scene)."""

    @abc.abstractmethod
    def predict_instances(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[H, W] int64 instance id of every pixel of one view's rendered ``outputs``."""

    @abc.abstractmethod
    def gaussian_instance_ids(self) -> torch.Tensor:
        """[N] int64 instance id of every Gaussian."""

    @abc.abstractmethod
    def export_ply(self, path: Path) -> None:
        """Every Gaussian's centre and instance id (and class where known) to a binary PLY at ``path``."""


class SceneEvaluation:
    """A model whose held-out views are scored together (:class:`~unisem_ns.metrics.scene.SceneEvaluator`).

    While ``scene_evaluator`` is set (between :meth:`begin_scene_evaluation` and :meth:`end_scene_evaluation`,
    which ``UnisemPipeline`` calls around ``ns-eval``'s loop over the views), the model's per-image evaluation
    adds each view to it. A model says what the evaluator scores by overriding :meth:`make_scene_evaluator`.
    """

    scene_evaluator = None

    def make_scene_evaluator(self):
        from unisem_ns.metrics.scene import SceneEvaluator

        return SceneEvaluator()

    def begin_scene_evaluation(self) -> None:
        self.scene_evaluator = self.make_scene_evaluator()

    def end_scene_evaluation(self) -> None:
        self.scene_evaluator = None


class FeatureChannelsHead(abc.ABC):
    """A model whose per-Gaussian feature parameter (and so ``outputs["features"]``) holds several named channels
    side by side, e.g. the panoptic model's ``{"semantic": d, "instance": 16}``. Readers ask for a channel by name
    (:meth:`feature_channel`) instead of slicing column numbers."""

    @property
    @abc.abstractmethod
    def feature_channels(self) -> Dict[str, int]:
        """Channel name -> width, in column order (the widths sum to the feature width)."""

    def feature_channel(self, features: torch.Tensor, name: str) -> torch.Tensor:
        """Channel ``name`` ``[..., width]`` of a feature tensor ``[..., total]`` (rendered ``outputs["features"]``
        or the per-Gaussian parameter)."""
        start = 0
        for key, width in self.feature_channels.items():
            if key == name:
                if features.shape[-1] != sum(self.feature_channels.values()):
                    raise ValueError(f"features have {features.shape[-1]} columns; channels {self.feature_channels}")
                return features[..., start : start + width]
            start += width
        raise KeyError(f"no feature channel {name!r}; channels: {list(self.feature_channels)}")


class PanopticHead(SemanticHead, InstanceHead):
    """Semantic classes and object instances of one model, composed per pixel (class, instance).

    A model sets, when it is built: ``thing_class_ids`` (class ids that have instances; every other non-void class
    is stuff: one segment, instance id 0)."""

    thing_class_ids: List[int]

    @abc.abstractmethod
    def predict_panoptic(self, outputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """([H, W] class ids (0 = void), [H, W] instance ids (0 = stuff / none; ids agree across views)) of one
        view's rendered ``outputs``."""
