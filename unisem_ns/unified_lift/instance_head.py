"""The instance capability of Unified-Lift as a state object (no nerfstudio import): the global codebook, which
codes the mapping uses, live / duplicate codes, per-code language (and class) accumulation, the instance map
with edge-aware refinement, per-Gaussian ids and the PLY export.

Like gsplat's strategies: a small dataclass of settings (:class:`InstanceHeadConfig`), an explicit state
(:class:`InstanceHeadState`: the codebook and its running statistics) and functions over both. A model that
predicts instances (``UnifiedLiftModel``, ``PanopticModel``) composes them: it builds a state with
:func:`init_instance_state`, hands it to :func:`register_instance_state` (which puts the codebook and the
running tensors on the model under fixed names, so they move with ``.to(device)`` and land in checkpoints as
``codebook.code``, ``language_sum``, ``language_weight``, ``code_usage`` [+ ``class_sum``]) and reads it back
with :func:`instance_state_of` whenever it calls a function here.

Steps refer to docs/methods/unified_lift.md (10-14) and docs/methods/panoptic.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .codebook import Codebook, drop_duplicate_codes
from .edge_refine import edge_aware_argmax
from .export import export_instance_ply

__all__ = [
    "InstanceHeadConfig",
    "InstanceHeadState",
    "init_instance_state",
    "register_instance_state",
    "instance_state_of",
    "track_usage",
    "live_codes",
    "accumulate_language",
    "accumulate_classes",
    "instance_scores",
    "readout",
    "instance_map",
    "instance_language",
    "code_class_distribution",
    "code_classes",
    "export_instances",
]

#: names of the running tensors on the owning module (checkpoint keys; do not rename: old runs must load)
STATE_BUFFERS = ("language_sum", "language_weight", "code_usage")
CLASS_BUFFER = "class_sum"


@dataclass
class InstanceHeadConfig:
    """Settings of the instance head (docs/methods/unified_lift.md, "Main settings")."""

    codebook_size: int = 256
    """Number of object codes L (the most instances a scene can hold)."""
    feature_dim: int = 16
    """Width of the instance feature (the codebook's width)."""
    live_code_min_views: float = 2.0
    """Codes whose usage >= this / number of training views compete at inference (0 = all; step 12)."""
    duplicate_code_cos: float = 0.75
    """A live code within this cosine of a more-used live code does not compete (1 = keep all; step 12)."""
    refine_radius: int = 2
    """Edge-aware refinement radius of rendered instance maps (0 = plain argmax; step 13)."""
    refine_sigma_space: float = 1.5
    """Spatial std (pixels) of the edge-aware refinement."""
    refine_sigma_rgb: float = 0.1
    """Colour std (RGB in [0, 1]) of the edge-aware refinement."""
    code_usage_decay: float = 0.999
    """Per-step decay of the code-usage average (step 10)."""
    language_decay: float = 0.995
    """Per-step decay of the running per-code language embedding (step 14)."""
    class_decay: float = 0.995
    """Per-step decay of the running per-code class votes (docs/methods/panoptic.md; panoptic model only)."""


@dataclass
class InstanceHeadState:
    """The codebook and its running statistics. ``class_sum`` is None unless the owner accumulates classes."""

    codebook: Codebook
    code_usage: torch.Tensor  # [L] decayed average of the codes the ID mapping assigned
    language_sum: torch.Tensor  # [L, D] decayed sum of unit language cues of the pixels each code wins
    language_weight: torch.Tensor  # [L] decayed pixel count behind language_sum
    class_sum: Optional[torch.Tensor] = None  # [L, K] decayed class votes of the pixels each code wins


def init_instance_state(cfg: InstanceHeadConfig, language_dim: int = 1, num_classes: int = 0) -> InstanceHeadState:
    """A fresh state: the codebook (its init draws from the global torch RNG, like ``Conv2d``'s weight) and zero
    statistics; ``num_classes`` > 0 adds the per-code class votes."""
    codebook = Codebook(cfg.codebook_size, cfg.feature_dim)
    L = cfg.codebook_size
    return InstanceHeadState(
        codebook=codebook,
        code_usage=torch.zeros(L),
        language_sum=torch.zeros(L, language_dim),
        language_weight=torch.zeros(L),
        class_sum=torch.zeros(L, num_classes) if num_classes > 0 else None,
    )


def register_instance_state(module: nn.Module, state: InstanceHeadState) -> None:
    """Put ``state`` on ``module``: ``module.codebook`` (submodule) and the running tensors as buffers named
    :data:`STATE_BUFFERS` (+ ``class_sum``), so they follow the module's device and checkpoints."""
    module.codebook = state.codebook
    module.register_buffer("language_sum", state.language_sum)
    module.register_buffer("language_weight", state.language_weight)
    module.register_buffer("code_usage", state.code_usage)
    if state.class_sum is not None:
        module.register_buffer(CLASS_BUFFER, state.class_sum)


def instance_state_of(module: nn.Module) -> InstanceHeadState:
    """The state registered on ``module`` (the live tensors, not copies: in-place updates persist)."""
    return InstanceHeadState(
        codebook=module.codebook,
        code_usage=module.code_usage,
        language_sum=module.language_sum,
        language_weight=module.language_weight,
        class_sum=getattr(module, CLASS_BUFFER, None),
    )


# ------------------------------------------------------------------------------------------------- training


@torch.no_grad()
def track_usage(cfg: InstanceHeadConfig, state: InstanceHeadState, mapping: Dict[int, int]) -> None:
    """Step 10: decay the usage and credit the codes this view's ID mapping assigned."""
    decay = cfg.code_usage_decay
    state.code_usage.mul_(decay)
    if mapping:
        used = torch.tensor(sorted(set(mapping.values())), dtype=torch.long, device=state.code_usage.device)
        state.code_usage[used] += 1.0 - decay


@torch.no_grad()
def accumulate_language(cfg: InstanceHeadConfig, state: InstanceHeadState, features: torch.Tensor,
                        seg: torch.Tensor, lang_feats: torch.Tensor) -> None:
    """Step 14: running mean of the 2D language cue over each code's pixels.

    ``features`` [H, W, D] rendered instance features (detached), ``seg`` [L, H, W] or [H, W] segment index per
    pixel (level 0 used; < 0 = no cue), ``lang_feats`` [K, C] segment embeddings. A pixel's cue is its segment's
    embedding, so the sum over a code's pixels is (pixels of each segment under that code) @ (unit embeddings):
    no per-pixel [H, W, C] target is built."""
    device = features.device
    seg = seg.to(device)
    seg = (seg[None] if seg.ndim == 2 else seg)[0].long()
    valid = seg >= 0
    if not valid.any():
        return
    ids = state.codebook.instance_ids(features[valid])
    unit = F.normalize(lang_feats.to(device).float(), dim=-1)  # [K, C]
    k = unit.shape[0]
    counts = torch.zeros(state.language_weight.shape[0] * k, device=device)
    counts.index_add_(0, ids * k + seg[valid], torch.ones_like(ids, dtype=torch.float32))
    counts = counts.reshape(-1, k)  # [L, K] pixels of segment k assigned to code l
    state.language_sum.mul_(cfg.language_decay).add_(counts @ unit)
    state.language_weight.mul_(cfg.language_decay).add_(counts.sum(1))


@torch.no_grad()
def accumulate_classes(cfg: InstanceHeadConfig, state: InstanceHeadState, codes: torch.Tensor,
                       classes: torch.Tensor) -> None:
    """Per-code class votes (docs/methods/panoptic.md, step 6): decay ``class_sum`` once, then add one vote per
    pixel to (its code, its class).

    ``codes`` [...] long code index of each pixel (the code it wins), ``classes`` [...] long class index in
    ``[0, K)`` of the same pixels, < 0 = no vote (no semantic target there)."""
    if state.class_sum is None:
        raise ValueError("accumulate_classes: this instance state has no class_sum (init with num_classes > 0)")
    L, K = state.class_sum.shape
    codes = codes.reshape(-1).long().to(state.class_sum.device)
    classes = classes.reshape(-1).long().to(state.class_sum.device)
    ok = classes >= 0
    votes = torch.zeros(L * K, device=state.class_sum.device)
    votes.index_add_(0, codes[ok] * K + classes[ok], torch.ones(int(ok.sum()), device=votes.device))
    state.class_sum.mul_(cfg.class_decay).add_(votes.reshape(L, K))


# ------------------------------------------------------------------------------------------------- inference


def live_codes(cfg: InstanceHeadConfig, state: InstanceHeadState, num_train_views: int) -> Optional[torch.Tensor]:
    """Step 12: [L] bool codes that compete at inference, or None (all: threshold 0 or nothing tracked yet)."""
    if cfg.live_code_min_views <= 0:
        return None
    live = state.code_usage >= cfg.live_code_min_views / max(num_train_views, 1)
    if not bool(live.any()):
        return None
    return drop_duplicate_codes(state.codebook.code, live, state.code_usage, cfg.duplicate_code_cos)


@torch.no_grad()
def instance_scores(cfg: InstanceHeadConfig, state: InstanceHeadState, features: torch.Tensor,
                    num_train_views: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Step 11: logits ``[..., K]`` of features ``[..., D]`` over the competing (live) codes, and the code ids
    ``[K]`` they stand for (None: all codes, 0..L-1)."""
    live = live_codes(cfg, state, num_train_views)
    ids = torch.nonzero(live).squeeze(-1) if live is not None else None
    code = state.codebook.code if ids is None else state.codebook.code[ids]
    return features @ code.T, ids


@torch.no_grad()
def readout(cfg: InstanceHeadConfig, scores: torch.Tensor, ids: Optional[torch.Tensor],
            rgb: Optional[torch.Tensor] = None, probabilities: bool = True) -> torch.Tensor:
    """Step 13: argmax of ``scores`` [H, W, K] (or [N, K]); with ``rgb`` [H, W, 3] and ``refine_radius`` > 0 the
    (softmax when ``probabilities``) scores are first filtered edge-aware on it. Returns code ids (``ids[best]``)."""
    if rgb is None or cfg.refine_radius <= 0:
        best = scores.argmax(dim=-1)
    else:
        if probabilities:
            scores = torch.softmax(scores, dim=-1)
        best = edge_aware_argmax(scores, rgb, cfg.refine_radius, cfg.refine_sigma_space, cfg.refine_sigma_rgb)
    return best if ids is None else ids[best]


@torch.no_grad()
def instance_map(cfg: InstanceHeadConfig, state: InstanceHeadState, features: torch.Tensor, num_train_views: int,
                 rgb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[H, W] long code id per pixel of a rendered instance-feature image [H, W, D] (or [N] of features [N, D]
    without ``rgb``): :func:`instance_scores` then :func:`readout`."""
    scores, ids = instance_scores(cfg, state, features, num_train_views)
    return readout(cfg, scores, ids, rgb)


def instance_language(state: InstanceHeadState) -> torch.Tensor:
    """[L, C] unit language embedding per code (zero for codes never seen with a cue)."""
    mean = state.language_sum / state.language_weight.clamp_min(1e-8)[:, None]
    return F.normalize(mean, dim=-1) * (state.language_weight > 0)[:, None]


def code_class_distribution(state: InstanceHeadState) -> torch.Tensor:
    """[L, K] class distribution per code (rows sum to 1; all zero for a code that never won a voting pixel)."""
    if state.class_sum is None:
        raise ValueError("code_class_distribution: this instance state has no class_sum")
    total = state.class_sum.sum(1, keepdim=True)
    return state.class_sum / total.clamp_min(1e-12) * (total > 0)


def code_classes(state: InstanceHeadState, min_weight: float = 0.0) -> torch.Tensor:
    """[L] long: the majority class index of each code, -1 where its votes sum to <= ``min_weight``."""
    if state.class_sum is None:
        raise ValueError("code_classes: this instance state has no class_sum")
    best = state.class_sum.argmax(dim=1)
    return torch.where(state.class_sum.sum(1) > min_weight, best, torch.full_like(best, -1))


def export_instances(path: Union[str, Path], means: torch.Tensor, instance_ids: torch.Tensor,
                     class_ids: Optional[torch.Tensor] = None,
                     class_names: Optional[Sequence[str]] = None) -> Path:
    """Every Gaussian's centre, instance id and class (-1 = unknown) to a binary PLY
    (:func:`~unisem_ns.unified_lift.export.export_instance_ply`)."""
    return export_instance_ply(path, means.detach().cpu(), instance_ids.cpu(),
                               None if class_ids is None else class_ids.cpu(), None, class_names=class_names or None)
