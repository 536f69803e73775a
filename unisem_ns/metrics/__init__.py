"""Evaluation metrics shared by every method (values returned as Python floats for ns-eval)."""

from .depth import depth_metrics

__all__ = ["depth_metrics"]
