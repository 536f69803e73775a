"""The language-query field: the one implementation of text queries every method calls.

Pure functions over per-pixel features ``[..., D]`` (torch, batched):

- :func:`relevancy` — LERF relevancy with canonical negatives (pairwise softmax at temperature 10, min over
  negatives), identical in LERF, LangSplat and GSemSplat;
- :func:`segment` — closed-set argmax of cosine similarity, optionally with an "other" label;
- :func:`postprocess_relevancy` / :func:`binary_mask` — LangSplat (threshold 0.4) / GSemSplat (0.5) relevancy
  to mask post-processing, with :func:`mode_filter` (7x7 majority) also usable on ground-truth masks;
- :func:`localize` — the localisation point (LangSplat: box-filtered map; GSemSplat: 0.5-mixed map).

:class:`LanguageQueryField` holds a :class:`~unisem_ns.language.encoders.TextEncoder`, the current queries and
label set, and turns a rendered feature image into the ``relevancy_{i}`` / ``composited_{i}`` /
``segmentation`` outputs shown in the viewer.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from unisem_ns.metrics.masks import STYLE_THRESHOLDS, box_mean, mode_filter, postprocess_relevancy

from .encoders import TextEncoder, make_text_encoder

__all__ = [
    "CANONICAL_NEGATIVES",
    "RELEVANCY_TEMPERATURE",
    "SMOOTH_KERNEL",
    "MODE_KERNEL",
    "MASK_THRESHOLDS",
    "OTHER_COLOR",
    "relevancy",
    "segment",
    "mode_filter",
    "postprocess_relevancy",
    "binary_mask",
    "localize",
    "turbo",
    "palette",
    "composite",
    "LanguageQueryField",
]

#: LERF's canonical negative phrases (also LangSplat's and GSemSplat's).
CANONICAL_NEGATIVES: Tuple[str, ...] = ("object", "things", "stuff", "texture")
RELEVANCY_TEMPERATURE = 10.0
#: Box filter size of the relevancy smoothing (cv2.filter2D with a 30x30 mean kernel in LangSplat/GSemSplat).
SMOOTH_KERNEL = 30
#: Majority ("mode") filter size applied to the thresholded mask (``smooth`` in their eval/utils.py: 2*3+1).
MODE_KERNEL = 7
#: Threshold on the min-max normalised smoothed relevancy (LangSplat eval.sh: 0.4; GSemSplat: 0.5); the
#: post-processing itself is the evaluation protocol's and lives in :mod:`unisem_ns.metrics.masks`.
MASK_THRESHOLDS: Dict[str, float] = STYLE_THRESHOLDS
#: Relevancy above this is drawn over the RGB in ``composited_{i}`` (LERF).
COMPOSITE_THRESHOLD = 0.5
#: Colour of the "other" label in ``segmentation``.
OTHER_COLOR = (0.5, 0.5, 0.5)

Latent = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# relevancy and segmentation
# ---------------------------------------------------------------------------------------------------------------


def relevancy(
    features: torch.Tensor,
    positives: torch.Tensor,
    negatives: Optional[torch.Tensor] = None,
    temperature: float = RELEVANCY_TEMPERATURE,
    *,
    encoder: Optional[TextEncoder] = None,
) -> torch.Tensor:
    """LERF relevancy ``[..., Q]`` in [0, 1] of features ``[..., D]`` for positive phrases ``[Q, D]``.

    Features and phrases are L2-normalised; for each positive q and negative n,
    ``p = softmax(T * [f.q, f.n])[0] = sigmoid(T * (f.q - f.n))``; relevancy is the minimum over negatives.
    ``negatives`` defaults to :data:`CANONICAL_NEGATIVES` encoded with ``encoder`` (required then).
    """
    if negatives is None:
        if encoder is None:
            raise ValueError("relevancy: pass negatives [K, D] or the encoder that encodes the canonical negatives")
        negatives = encoder.encode(list(CANONICAL_NEGATIVES))
    if positives.ndim == 1:
        positives = positives[None]
    if negatives.ndim == 1:
        negatives = negatives[None]
    d = features.shape[-1]
    if positives.shape[-1] != d or negatives.shape[-1] != d:
        raise ValueError(f"relevancy: features have dim {d} but phrases have {positives.shape[-1]}/{negatives.shape[-1]}")
    dtype = features.dtype if features.is_floating_point() else torch.float32
    f = F.normalize(features.to(dtype), dim=-1)
    pos = F.normalize(positives.to(f.device, dtype), dim=-1)
    neg = F.normalize(negatives.to(f.device, dtype), dim=-1)
    sp = f @ pos.T  # [..., Q]
    sn = f @ neg.T  # [..., K]
    p = torch.sigmoid(temperature * (sp[..., :, None] - sn[..., None, :]))  # [..., Q, K]
    return p.amin(dim=-1)


def segment(features: torch.Tensor, label_embeds: torch.Tensor, other_threshold: Optional[float] = None) -> torch.Tensor:
    """Closed-set labels ``[...]`` (long): argmax of cosine similarity with ``label_embeds [L, D]``.

    With ``other_threshold``, pixels whose best cosine is below it get index ``L`` ("other").
    """
    if label_embeds.shape[0] == 0:
        raise ValueError("segment: empty label set")
    if label_embeds.shape[-1] != features.shape[-1]:
        raise ValueError(f"segment: features have dim {features.shape[-1]} but labels have {label_embeds.shape[-1]}")
    dtype = features.dtype if features.is_floating_point() else torch.float32
    f = F.normalize(features.to(dtype), dim=-1)
    lab = F.normalize(label_embeds.to(f.device, dtype), dim=-1)
    best, ids = (f @ lab.T).max(dim=-1)
    if other_threshold is not None:
        ids = torch.where(best < other_threshold, torch.full_like(ids, label_embeds.shape[0]), ids)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# mask post-processing and localisation
# ---------------------------------------------------------------------------------------------------------------


def binary_mask(relevancy_map: torch.Tensor, style: str = "langsplat") -> torch.Tensor:
    """``[H, W]`` boolean mask of a relevancy map ([H, W] or [H, W, 1]), on the map's device.

    The post-processing is the evaluation protocol's, so it lives with the metrics
    (:func:`unisem_ns.metrics.masks.postprocess_relevancy`).
    """
    r = relevancy_map[..., 0] if relevancy_map.ndim == 3 and relevancy_map.shape[-1] == 1 else relevancy_map
    return postprocess_relevancy(r, style)[0].to(relevancy_map.device)


def localize(relevancy_map: torch.Tensor, style: str = "langsplat",
             valid: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """``(row, col)`` of the maximum of the smoothed relevancy ``[H, W]``.

    ``style="langsplat"`` uses the 30x30 box-filtered map (LangSplat's ``lerf_localization``);
    ``"gsemsplat"`` the 0.5-mixed map ``0.5 * (r + box)``, restricted to ``valid`` pixels when given. Ties go to
    the first pixel in row-major order.
    """
    r = relevancy_map[..., 0] if relevancy_map.ndim == 3 and relevancy_map.shape[-1] == 1 else relevancy_map
    if r.ndim != 2:
        raise ValueError(f"localize expects [H, W] relevancy, got {tuple(relevancy_map.shape)}")
    box = box_mean(r, SMOOTH_KERNEL).to(device=r.device, dtype=torch.float32)
    if style == "langsplat":
        score = box
    elif style == "gsemsplat":
        score = 0.5 * (r.float() + box)
    else:
        raise ValueError(f"unknown localisation style {style!r}; use 'langsplat' or 'gsemsplat'")
    if valid is not None:
        score = score.masked_fill(~valid.to(score.device, torch.bool), float("-inf"))
    idx = int(torch.argmax(score.reshape(-1)))
    return idx // r.shape[1], idx % r.shape[1]


# ---------------------------------------------------------------------------------------------------------------
# colours
# ---------------------------------------------------------------------------------------------------------------

_TURBO: Optional[torch.Tensor] = None


def _turbo_lut() -> torch.Tensor:
    """256x3 turbo colormap: matplotlib's table when installed, else Google's polynomial approximation."""
    global _TURBO
    if _TURBO is None:
        try:
            import matplotlib

            lut = torch.tensor(matplotlib.colormaps["turbo"].colors, dtype=torch.float32)[:, :3]
        except Exception:  # pragma: no cover - matplotlib comes with nerfstudio
            x = torch.linspace(0, 1, 256, dtype=torch.float64)[:, None]
            powers = torch.cat([x ** k for k in range(6)], dim=1)
            coef = torch.tensor([
                [0.13572138, 0.09140261, 0.10667330],
                [4.61539260, 2.19418839, 12.64194608],
                [-42.66032258, 4.84296658, -60.58204836],
                [132.13108234, -14.18503333, 110.36276771],
                [-152.94239396, 4.27729857, -89.90310912],
                [59.28637943, 2.82956604, 27.34824973],
            ], dtype=torch.float64)
            lut = (powers @ coef).clamp(0, 1).float()
        _TURBO = lut
    return _TURBO


def turbo(x: torch.Tensor) -> torch.Tensor:
    """Turbo colours ``[..., 3]`` of values ``x`` in [0, 1] (``[..., 1]`` or ``[...]``), as Nerfstudio's colormap."""
    if x.ndim >= 1 and x.shape[-1] == 1:
        x = x[..., 0]
    lut = _turbo_lut().to(x.device)
    idx = (x.float().nan_to_num(0.0).clamp(0, 1) * 255).long()
    return lut[idx]


_BASE_PALETTE = (
    (0.894, 0.102, 0.110), (0.216, 0.494, 0.722), (0.302, 0.686, 0.290), (0.596, 0.306, 0.639),
    (1.000, 0.498, 0.000), (1.000, 1.000, 0.200), (0.651, 0.337, 0.157), (0.969, 0.506, 0.749),
    (0.000, 0.808, 0.820), (0.498, 0.788, 0.498), (0.745, 0.682, 0.831), (0.992, 0.753, 0.525),
    (0.220, 0.424, 0.690), (0.941, 0.008, 0.498), (0.400, 0.400, 0.000), (0.106, 0.620, 0.467),
    (0.851, 0.373, 0.008), (0.459, 0.439, 0.702), (0.902, 0.671, 0.008), (0.651, 0.463, 0.114),
)


def palette(n: int) -> torch.Tensor:
    """``[n, 3]`` fixed label colours in [0, 1]: 20 hand-picked, then golden-ratio hues (same for every call)."""
    cols = list(_BASE_PALETTE[:n])
    k = 0
    while len(cols) < n:
        h = (k * 0.618033988749895) % 1.0
        s, v = 0.65 + 0.35 * ((k // 7) % 2), 0.95 - 0.3 * ((k // 3) % 2)
        i = int(h * 6) % 6
        f = h * 6 - int(h * 6)
        p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
        cols.append([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])
        k += 1
    return torch.tensor(cols, dtype=torch.float32).reshape(n, 3)


def composite(rel: torch.Tensor, rgb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LERF's ``composited`` image ``[H, W, 3]``: turbo of ``clip(rel - 0.5, 0, 1) * 2`` where ``rel > 0.5``, RGB elsewhere."""
    r = rel[..., 0] if rel.ndim == 3 else rel
    colour = turbo((r - COMPOSITE_THRESHOLD).clamp(0, 1) * 2.0)
    base = torch.zeros_like(colour) if rgb is None else rgb[..., :3].to(colour.device, colour.dtype)
    return torch.where((r > COMPOSITE_THRESHOLD)[..., None], colour, base)


# ---------------------------------------------------------------------------------------------------------------
# the field
# ---------------------------------------------------------------------------------------------------------------


class LanguageQueryField(nn.Module):
    """Text queries and a closed label set over a method's rendered feature image.

    ``decoder`` maps a method's latent ``[..., d]`` to the encoder space ``[..., D]`` (an MLP, an autoencoder's
    decoder); ``text_to_latent`` instead maps encoded phrases ``[Q, D]`` into the latent space ``[Q, d]`` and the
    comparison happens there. With both, the closed label set is compared in the latent space and free-text
    queries in the decoded space. Neither is registered as a submodule: the
    method owns their parameters and checkpoints them. Phrase embeddings are cached (encoder space, CPU).
    """

    def __init__(
        self,
        encoder: Union[TextEncoder, str, dict, None] = None,
        decoder: Optional[Latent] = None,
        text_to_latent: Optional[Latent] = None,
        temperature: float = RELEVANCY_TEMPERATURE,
        negatives: Sequence[str] = CANONICAL_NEGATIVES,
        chunk_size: int = 1 << 16,
    ) -> None:
        super().__init__()
        self.encoder = make_text_encoder(encoder)
        # Stored in __dict__ so nn.Module does not adopt them as submodules.
        self.__dict__["_decoder"] = decoder
        self.__dict__["_text_to_latent"] = text_to_latent
        self.temperature = float(temperature)
        self.negative_phrases: List[str] = list(negatives)
        self.chunk_size = int(chunk_size)
        self._queries: List[str] = []
        self._labels: List[str] = []
        self.other_threshold: Optional[float] = None
        self._pos: Optional[torch.Tensor] = None
        self._neg: Optional[torch.Tensor] = None
        self._lab: Optional[torch.Tensor] = None

    # -- configuration ---------------------------------------------------------------------------------------------

    @property
    def decoder(self) -> Optional[Latent]:
        return self.__dict__["_decoder"]

    @property
    def text_to_latent(self) -> Optional[Latent]:
        return self.__dict__["_text_to_latent"]

    def set_decoder(self, decoder: Optional[Latent]) -> None:
        self.__dict__["_decoder"] = decoder

    def set_text_to_latent(self, fn: Optional[Latent]) -> None:
        self.__dict__["_text_to_latent"] = fn

    @property
    def queries(self) -> List[str]:
        return list(self._queries)

    @property
    def labels(self) -> List[str]:
        return list(self._labels)

    def has_queries(self) -> bool:
        return bool(self._queries)

    def has_labels(self) -> bool:
        return bool(self._labels)

    def set_queries(self, queries: Sequence[str]) -> None:
        """Positive phrases for ``relevancy_{i}``/``composited_{i}`` (blank entries dropped; [] clears)."""
        self._queries = [q.strip() for q in queries if q and q.strip()]
        self._pos = self.encoder.encode(self._queries) if self._queries else None

    def set_queries_from_text(self, text: str) -> None:
        """Queries from one string separated by ``;`` (the viewer's text box), e.g. ``"chair; lamp"``."""
        self.set_queries((text or "").split(";"))

    def set_labels(self, labels: Sequence[str], other_threshold: Optional[float] = None) -> None:
        """Closed label set for ``segmentation``; pixels below ``other_threshold`` cosine become "other"."""
        self._labels = [l.strip() for l in labels if l and l.strip()]
        self.other_threshold = other_threshold
        self._lab = self.encoder.encode(self._labels) if self._labels else None

    def negatives(self) -> torch.Tensor:
        if self._neg is None:
            self._neg = self.encoder.encode(self.negative_phrases)
        return self._neg

    # -- evaluation ------------------------------------------------------------------------------------------------

    def _in_latent(self, kind: str) -> bool:
        """Where ``kind`` ("labels" or "queries") is compared: in the latent space when ``text_to_latent`` is set,
        except free-text queries when a ``decoder`` is set too (decoding keeps open-vocabulary phrases that the
        latent space was not trained on apart; a closed label set was, so it stays in the latent)."""
        if self.text_to_latent is None:
            return False
        return kind == "labels" or self.decoder is None

    def _phrases(self, emb: torch.Tensor, device: torch.device, dtype: torch.dtype, kind: str = "labels") -> torch.Tensor:
        emb = emb.to(device)
        if self._in_latent(kind):
            emb = self.text_to_latent(emb)
        return F.normalize(emb.to(dtype), dim=-1)

    def _features(self, feats: torch.Tensor, kind: str = "labels") -> torch.Tensor:
        if not self._in_latent(kind) and self.decoder is not None:
            feats = self.decoder(feats)
        return feats.float()

    @torch.no_grad()
    def query_outputs(self, features: torch.Tensor, rgb: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Viewer/eval outputs for a feature image ``[H, W, d]``.

        ``relevancy_{i}`` ([H, W, 1] in [0, 1]) and ``composited_{i}`` ([H, W, 3]) per query;
        ``segmentation`` ([H, W, 3]) and ``segmentation_ids`` ([H, W] long, ``len(labels)`` = "other") when a label
        set is set.
        """
        if features.ndim != 3:
            raise ValueError(f"query_outputs expects features [H, W, d], got {tuple(features.shape)}")
        h, w, d = features.shape
        out: Dict[str, torch.Tensor] = {}
        if not self._queries and not self._labels:
            return out
        dev = features.device
        pos = self._phrases(self._pos, dev, torch.float32, "queries") if self._pos is not None else None
        neg = self._phrases(self.negatives(), dev, torch.float32, "queries") if pos is not None else None
        lab = self._phrases(self._lab, dev, torch.float32) if self._lab is not None else None
        flat = features.reshape(-1, d)
        rels, ids = [], []
        for i in range(0, flat.shape[0], self.chunk_size):
            chunk = flat[i:i + self.chunk_size]
            if pos is not None:
                rels.append(relevancy(self._features(chunk, "queries"), pos, neg, self.temperature))
            if lab is not None:
                ids.append(segment(self._features(chunk), lab, self.other_threshold))
        if pos is not None:
            rel = torch.cat(rels).reshape(h, w, -1)
            for q in range(rel.shape[-1]):
                r = rel[..., q:q + 1]
                out[f"relevancy_{q}"] = r
                out[f"composited_{q}"] = composite(r, rgb)
        if lab is not None:
            seg = torch.cat(ids).reshape(h, w)
            colours = torch.cat([palette(len(self._labels)), torch.tensor([OTHER_COLOR])]).to(dev)
            out["segmentation_ids"] = seg
            out["segmentation"] = colours[seg]
        return out

    @torch.no_grad()
    def classify(self, features: torch.Tensor, labels: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Closed-set label index ``[...]`` (long) of features ``[..., d]`` over ``labels`` (default: the label
        set), compared in the same space as :meth:`query_outputs` (latent when ``text_to_latent`` is set)."""
        lab = self.encoder.encode(list(labels)) if labels is not None else self._lab
        if lab is None:
            raise ValueError("classify: no label set; call set_labels first or pass labels")
        lab = self._phrases(lab, features.device, torch.float32)
        flat = features.reshape(-1, features.shape[-1])
        ids = [segment(self._features(flat[i:i + self.chunk_size]), lab) for i in range(0, flat.shape[0], self.chunk_size)]
        return torch.cat(ids).reshape(features.shape[:-1]) if ids else flat.new_zeros(features.shape[:-1], dtype=torch.long)

    # -- helpers used by the viewer/CLI glue ------------------------------------------------------------------------

    @staticmethod
    def colormap(rel: torch.Tensor) -> torch.Tensor:
        """Turbo colours ``[H, W, 3]`` of a relevancy map ``[H, W]`` or ``[H, W, 1]``."""
        return turbo(rel)

    @staticmethod
    def palette(n: int) -> torch.Tensor:
        """``[n, 3]`` fixed label colours (index k = k-th label)."""
        return palette(n)

    def extra_repr(self) -> str:
        return f"encoder={self.encoder.name}, queries={self._queries}, labels={len(self._labels)}"
