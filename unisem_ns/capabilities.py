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
from typing import TYPE_CHECKING, Dict, List, Optional

import torch

if TYPE_CHECKING:
    from unisem_ns.language.query_field import LanguageQueryField

__all__ = ["SemanticHead", "InstanceHead"]


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
