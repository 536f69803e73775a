"""Panoptic Gaussian splatting core (no nerfstudio import): one model carrying econSG's semantic latent and
Unified-Lift's instance feature (docs/methods/panoptic.md).

* :mod:`.channels`: :class:`FeatureChannels`, the named split of the per-Gaussian feature parameter.
* :mod:`.compose`: stuff / thing classes, :func:`compose_panoptic` (class + instance per pixel), colours, text
  query -> class.
* :mod:`.export`: per-Gaussian PLY with class, instance id and semantic latent.

The per-code class votes live with the instance head (:func:`unisem_ns.unified_lift.instance_head.accumulate_classes`).
"""

from .channels import FeatureChannels
from .compose import (
    DEFAULT_STUFF_CLASSES,
    compose_panoptic,
    match_classes,
    panoptic_colours,
    split_stuff_things,
    thing_mask,
)
from .export import export_panoptic_ply, read_panoptic_ply

__all__ = [
    "FeatureChannels",
    "DEFAULT_STUFF_CLASSES",
    "compose_panoptic",
    "match_classes",
    "panoptic_colours",
    "split_stuff_things",
    "thing_mask",
    "export_panoptic_ply",
    "read_panoptic_ply",
]
