"""Drawing (context, target) view sets from scenes: random for training, Uni3R's protocol for evaluation.

Frames of a scene are consecutive video frames. Training: V context frames spaced ``stride`` apart inside a window,
targets drawn from the window's other frames. Evaluation [C: uni3r/datasets/testdata.py]: 2-view — target i with
i % 8 in {1, 4}, context (i - 1, i + 1); V-view — the first 2V - 1 frames, context = even, targets = odd.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .corpus import SceneViews
from .geometry import relative_viewmats

__all__ = ["ViewSet", "make_view_set", "random_view_set", "protocol_view_sets"]


@dataclass
class ViewSet:
    """V context views then T target views of one scene, as tensors (context first; view 0 = reference)."""

    scene: str
    n_context: int
    indices: List[int]
    images: Tensor  # [V+T, 3, H, W] float in [0, 1]
    Ks: Tensor  # [V+T, 3, 3]
    viewmats: Tensor  # [V+T, 4, 4] world(=view 0 camera)-to-camera, OpenCV; GT, used for training renders only
    depths: Tensor  # [V+T, H, W] metres (0 = missing)
    cue_seg: Optional[Tensor] = None  # [V+T, H, W] long rows of cue_feats, -1 = none
    cue_feats: Optional[Tensor] = None  # [K, D]
    object_mask: Optional[Tensor] = None  # [V+T, H, W] long
    semantic: Optional[Tensor] = None  # [V+T, H, W] long GT (evaluation only)

    @property
    def n_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> Tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def to(self, device) -> "ViewSet":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, Tensor) else v
        return ViewSet(**kw)


def make_view_set(scene: SceneViews, context: Sequence[int], targets: Sequence[int], with_gt: bool = False) -> ViewSet:
    idx = list(context) + list(targets)
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a[idx]))  # noqa: E731
    c2w = torch.from_numpy(scene.c2w[idx]).float()
    return ViewSet(
        scene=scene.name, n_context=len(context), indices=idx,
        images=torch.from_numpy(scene.images[idx]).permute(0, 3, 1, 2).float() / 255.0,
        Ks=torch.from_numpy(scene.K[idx]).float(), viewmats=relative_viewmats(c2w, 0),
        depths=torch.from_numpy(scene.depths[idx]).float(),
        cue_seg=None if scene.cue_seg is None else t(scene.cue_seg).long(),
        cue_feats=None if scene.cue_feats is None else torch.from_numpy(scene.cue_feats.astype(np.float32)),
        object_mask=None if scene.object_mask is None else t(scene.object_mask).long(),
        semantic=t(scene.semantic).long() if (with_gt and scene.semantic is not None) else None,
    )


def random_view_set(scenes: Sequence[SceneViews], rng: np.random.Generator, views: Sequence[int], n_targets: int,
                    strides: Sequence[int] = (2, 3, 4)) -> ViewSet:
    """A random scene, V in ``views``, context stride in ``strides`` (frames between context views), targets from
    the window's non-context frames."""
    scene = scenes[int(rng.integers(len(scenes)))]
    n = scene.num_views
    v = int(rng.choice(list(views)))
    stride = int(rng.choice(list(strides)))
    while stride > 1 and stride * (v - 1) + 1 > n:
        stride -= 1
    span = stride * (v - 1) + 1
    if span > n:
        raise ValueError(f"scene {scene.name} has {n} views; cannot take {v} context views")
    start = int(rng.integers(0, n - span + 1))
    context = [start + stride * i for i in range(v)]
    if rng.random() < 0.5:  # either end of the clip may be the reference view
        context = context[::-1]
    others = [i for i in range(start, start + span) if i not in context]
    if not others:
        others = [i for i in range(n) if i not in context]
    targets = list(rng.choice(others, size=min(n_targets, len(others)), replace=False))
    return make_view_set(scene, context, [int(x) for x in targets])


def protocol_view_sets(scene: SceneViews, v: int, max_targets: Optional[int] = None) -> List[Tuple[List[int], List[int]]]:
    """Uni3R's test protocol as (context, targets) lists; ``max_targets`` keeps that many targets, evenly spread."""
    n = scene.num_views
    if v == 2:
        sets = [([i - 1, i + 1], [i]) for i in range(1, n - 1) if i % 8 in (1, 4)]
        if max_targets is not None and len(sets) > max_targets:
            keep = np.linspace(0, len(sets) - 1, max_targets).round().astype(int)
            sets = [sets[k] for k in keep]
        return sets
    if 2 * v - 1 > n:
        raise ValueError(f"scene {scene.name} has {n} views; the {v}-view protocol needs {2 * v - 1}")
    context = list(range(0, 2 * v - 1, 2))
    targets = list(range(1, 2 * v - 1, 2))
    if max_targets is not None and len(targets) > max_targets:
        keep = np.linspace(0, len(targets) - 1, max_targets).round().astype(int)
        targets = [targets[k] for k in keep]
    return [(context, targets)]
