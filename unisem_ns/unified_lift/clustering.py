"""Clustering baseline (the ablation's first row, Contrastive-Lift style): HDBSCAN on per-Gaussian features.

Trained with contrastive + norm losses only (``UnifiedLiftLossConfig(use_codebook=False)``), the Gaussian
features are clustered once after training; rendered features are then labelled by their nearest cluster centre.

HDBSCAN's cost grows roughly quadratically with the point count (about 4 s for 20k points in 16-D on one core),
so it is fitted on a random subsample of at most ``max_fit`` Gaussians and every other Gaussian is assigned to the
nearest cluster centre by cosine similarity. Clusters of objects with many Gaussians survive subsampling; the
cluster-size threshold is rescaled by the sampling fraction so it keeps meaning "Gaussians in the full set".

Shapes: ``N`` Gaussians, ``D`` feature width, ``C`` clusters.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

__all__ = ["cluster_gaussian_features", "cluster_centres", "centre_similarity", "assign_pixels"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def cluster_centres(features: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """``[C, D]`` unit mean of the unit features of each cluster ``0..C-1`` (``-1`` ignored)."""
    f = _unit(_to_numpy(features))
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    num = int(lab.max()) + 1 if lab.size and lab.max() >= 0 else 0
    sums = np.zeros((num, f.shape[1]))
    ok = lab >= 0
    np.add.at(sums, lab[ok], f[ok])
    return _unit(sums)


def cluster_gaussian_features(
    features: ArrayLike,
    min_cluster_size: int = 100,
    min_samples: Optional[int] = None,
    max_fit: int = 20000,
    assign_noise: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Cluster per-Gaussian features ``[N, D]`` with HDBSCAN on unit-normalised features.

    Euclidean distance on unit vectors is a monotone function of cosine distance, so the clusters are cosine
    clusters while HDBSCAN keeps its fast tree-based Euclidean path.

    Args:
        min_cluster_size: smallest cluster in Gaussians of the full set (rescaled by ``max_fit / N`` when
            subsampling, floor 2).
        min_samples: HDBSCAN's min_samples, rescaled like ``min_cluster_size`` (None = sklearn's default, i.e.
            ``min_cluster_size`` after rescaling).
        max_fit: HDBSCAN sees at most this many Gaussians (keeps 100k+ scenes at a few seconds); the rest are
            assigned to the nearest centre (cosine).
        assign_noise: if False, HDBSCAN noise keeps ``-1``, and an unfitted Gaussian is noise when its cosine to
            its nearest centre is below the smallest cosine of that cluster's fitted members.

    Returns:
        ``labels [N]`` int64 in ``0..C-1`` (``-1`` = noise only when ``assign_noise`` is False), numbered by
        decreasing cluster size. All noise (no cluster found) gives all ``-1``.
    """
    from sklearn.cluster import HDBSCAN

    f = _unit(_to_numpy(features))
    n = f.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=max_fit, replace=False)) if n > max_fit else np.arange(n)
    frac = fit_idx.size / n
    mcs = max(2, int(round(min_cluster_size * frac)))
    ms = None if min_samples is None else max(1, int(round(min_samples * frac)))
    fit_labels = HDBSCAN(min_cluster_size=mcs, min_samples=ms, copy=True).fit(f[fit_idx]).labels_.astype(np.int64)

    # renumber by decreasing size so ids are stable against HDBSCAN's internal order
    found = fit_labels[fit_labels >= 0]
    if found.size == 0:
        return np.full(n, -1, dtype=np.int64)
    sizes = np.bincount(found)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    fit_labels = np.where(fit_labels >= 0, rank[np.maximum(fit_labels, 0)], -1)

    centres = cluster_centres(f[fit_idx], fit_labels)
    labels = np.full(n, -1, dtype=np.int64)
    labels[fit_idx] = fit_labels
    todo = np.ones(n, dtype=bool)
    todo[fit_idx] = False
    if assign_noise:
        todo |= labels < 0
    nearest, best = _nearest(f[todo], centres)
    if not assign_noise:
        # a cluster's "radius": the loosest cosine among its fitted members
        member_cos = np.einsum("nd,nd->n", f[fit_idx][fit_labels >= 0], centres[fit_labels[fit_labels >= 0]])
        radius = np.full(centres.shape[0], np.inf)
        np.minimum.at(radius, fit_labels[fit_labels >= 0], member_cos)
        nearest = np.where(best >= radius[nearest], nearest, -1)
    labels[todo] = nearest
    return labels


def _nearest(f: np.ndarray, centres: np.ndarray, chunk: int = 65536):
    idx = np.empty(f.shape[0], dtype=np.int64)
    best = np.empty(f.shape[0])
    for s in range(0, f.shape[0], chunk):
        sim = f[s : s + chunk] @ centres.T
        idx[s : s + chunk] = sim.argmax(axis=1)
        best[s : s + chunk] = sim.max(axis=1)
    return idx, best


def centre_similarity(rendered_features: torch.Tensor, centres: ArrayLike) -> torch.Tensor:
    """Cosine ``[..., C]`` of features ``[..., D]`` to every cluster centre ``[C, D]``."""
    c = torch.as_tensor(_to_numpy(centres) if not isinstance(centres, torch.Tensor) else centres)
    c = c.to(rendered_features.device, rendered_features.dtype)
    c = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    f = rendered_features / rendered_features.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return f @ c.T


def assign_pixels(rendered_features: torch.Tensor, centres: ArrayLike) -> torch.Tensor:
    """Instance map ``[H, W]`` (long): nearest cluster centre ``[C, D]`` by cosine for features ``[H, W, D]``."""
    return centre_similarity(rendered_features, centres).argmax(dim=-1)
