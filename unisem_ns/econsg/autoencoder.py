"""econSG's latent autoencoder (docs/methods/econsg.md, step 9): compresses D-dim language features (CLIP / MiniLM
space) to a d-dim unit latent (d = 6) that the Gaussians carry, with a decoder back to the text space.

* :class:`LatentAutoencoder`: encoder g = Linear(D, 256), then [BatchNorm1d, ReLU, Linear] to 128, 64, 32, d,
  L2-normalised; decoder h = d -> 16 -> 32 -> 64 -> 128 -> 256 -> 256 -> D with ReLU between, L2-normalised.
* :func:`autoencoder_loss`: the paper's ``||F_in - F_re||^2 + CE(F_re T^T, y) + CE(z T_z^T, y)`` with
  ``T_z = norm(g(T))``, or the released code's ``MSE + 1e-3 (1 - cos)``.
* :func:`train_autoencoder`: class-balanced sampling, Adam, best-by-validation (10 % held out).
* :func:`save_autoencoder` / :func:`load_autoencoder`: atomic state_dict + json of dims; loads with
  ``weights_only=True``.

Shapes: ``N`` samples, ``D`` input width, ``d`` latent width, ``K`` classes. No nerfstudio import.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from unisem_ns.utils.atomic import atomic_file, atomic_write_json

__all__ = [
    "AEConfig",
    "LatentAutoencoder",
    "autoencoder_loss",
    "train_autoencoder",
    "save_autoencoder",
    "load_autoencoder",
    "encode_in_batches",
]

ArrayLike = Union[Tensor, np.ndarray]


class LatentAutoencoder(nn.Module):
    """Encoder ``in_dim -> encoder_dims`` and decoder ``encoder_dims[-1] -> decoder_dims -> in_dim``.

    Args:
        in_dim: D, the feature width.
        encoder_dims: widths after the first Linear, the last one is the latent d.
            Default ``(256, 128, 64, 32, 6)`` (econSG's ``encoder_dims`` with ``sem_dim = 6``).
        decoder_dims: hidden widths of the decoder before the final Linear to D.
            Default ``(16, 32, 64, 128, 256, 256)``.
    """

    def __init__(
        self,
        in_dim: int,
        encoder_dims: Sequence[int] = (256, 128, 64, 32, 6),
        decoder_dims: Sequence[int] = (16, 32, 64, 128, 256, 256),
    ):
        super().__init__()
        self.in_dim = int(in_dim)
        self.encoder_dims = tuple(int(x) for x in encoder_dims)
        self.decoder_dims = tuple(int(x) for x in decoder_dims)
        if not self.encoder_dims:
            raise ValueError("encoder_dims needs at least the latent width")
        enc: List[nn.Module] = [nn.Linear(self.in_dim, self.encoder_dims[0])]
        for a, b in zip(self.encoder_dims[:-1], self.encoder_dims[1:]):
            enc += [nn.BatchNorm1d(a), nn.ReLU(), nn.Linear(a, b)]
        self.encoder = nn.Sequential(*enc)
        dec: List[nn.Module] = []
        prev = self.encoder_dims[-1]
        for w in self.decoder_dims:
            dec += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        dec.append(nn.Linear(prev, self.in_dim))
        self.decoder = nn.Sequential(*dec)

    @property
    def latent_dim(self) -> int:
        return self.encoder_dims[-1]

    def dims(self) -> Dict:
        """What :func:`load_autoencoder` needs to rebuild the module."""
        return {"in_dim": self.in_dim, "encoder_dims": list(self.encoder_dims), "decoder_dims": list(self.decoder_dims)}

    def encode(self, x: Tensor, running_stats: bool = False) -> Tensor:
        """g: [N, D] -> [N, d] unit rows.

        ``running_stats=True`` runs BatchNorm with its running statistics even in training mode (with
        gradients), so a small side batch such as the K class texts is encoded as at test time instead of
        being normalised by its own statistics.
        """
        h = x
        for layer in self.encoder:
            if running_stats and isinstance(layer, nn.BatchNorm1d):
                h = F.batch_norm(h, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
            else:
                h = layer(h)
        return F.normalize(h, dim=-1)

    def decode(self, z: Tensor) -> Tensor:
        """h: [N, d] -> [N, D] unit rows."""
        return F.normalize(self.decoder(z), dim=-1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(z [N, d], x_re [N, D])``."""
        z = self.encode(x)
        return z, self.decode(z)


def autoencoder_loss(
    model: LatentAutoencoder,
    x: Tensor,
    labels: Optional[Tensor],
    text: Optional[Tensor],
    form: str = "paper",
    logit_scale: float = 1.0,
    cos_weight: float = 1e-3,
) -> Dict[str, Tensor]:
    """The autoencoder loss on a batch.

    Args:
        model: the autoencoder.
        x: [N, D] unit input features.
        labels: [N] long class indices into ``text`` (-1 = ignore); only used by the paper form.
        text: [K, D] unit class text embeddings; only used by the paper form.
        form: ``"paper"``: ``rec = mean_n ||x - x_re||^2`` (squared L2 per sample) + ``ce_re = CE(s F_re T^T, y)``
            + ``ce_z = CE(s z T_z^T, y)`` with ``T_z = norm(g(T))`` (encoded with BatchNorm's running stats);
            ``"code"``: ``rec = MSE(x_re, x)`` (element mean) + ``cos_weight * (1 - cos)``.
        logit_scale: s, multiplies the cosine logits of both CE terms (1 = econSG, no temperature). [R]
        cos_weight: weight of the cosine term of the code form (1e-3).

    Returns:
        dict of scalar terms (``rec``, ``ce_re``, ``ce_z`` or ``rec``, ``cos``) and ``total``.
    """
    z, x_re = model(x)
    if form == "code":
        rec = F.mse_loss(x_re, x)
        cos = (1.0 - F.cosine_similarity(x_re, x, dim=-1)).mean()
        return {"rec": rec, "cos": cos, "total": rec + cos_weight * cos}
    if form != "paper":
        raise ValueError(f"loss form must be 'paper' or 'code' (got {form!r})")
    rec = (x - x_re).pow(2).sum(dim=-1).mean()
    zero = rec.new_zeros(())
    if labels is None or text is None or not bool((labels >= 0).any()):
        return {"rec": rec, "ce_re": zero, "ce_z": zero, "total": rec}
    t = F.normalize(text, dim=-1)
    tz = model.encode(t, running_stats=True)
    ce_re = F.cross_entropy(logit_scale * x_re @ t.T, labels, ignore_index=-1)
    ce_z = F.cross_entropy(logit_scale * z @ tz.T, labels, ignore_index=-1)
    return {"rec": rec, "ce_re": ce_re, "ce_z": ce_z, "total": rec + ce_re + ce_z}


@dataclass
class AEConfig:
    """Autoencoder training settings (econSG code defaults where known)."""

    latent_dim: int = 6
    """d (econSG ``sem_dim = 6``)."""
    encoder_hidden: Tuple[int, ...] = (256, 128, 64, 32)
    """Encoder widths before the latent; the encoder dims are ``encoder_hidden + (latent_dim,)``."""
    decoder_dims: Tuple[int, ...] = (16, 32, 64, 128, 256, 256)
    epochs: int = 100
    """econSG: 100 epochs (an epoch = one class-balanced draw, see ``samples_per_class``)."""
    batch_size: int = 128
    lr: float = 7e-4
    balanced: bool = True
    """Class-balanced sampling: every epoch draws ``samples_per_class`` samples from each class (with
    replacement when a class is smaller; unlabelled samples form one more group). False: every epoch is a
    permutation of all training samples."""
    samples_per_class: int = 256
    """[R] econSG's ``num_sampels`` value is not known; 256 keeps an epoch short."""
    max_steps: Optional[int] = 2000
    """Cap on optimiser steps over the whole run (epochs are cut short evenly), so N ~ 1e5 trains in seconds
    on CPU. [R] None = no cap."""
    loss_form: str = "paper"
    """``"paper"`` (reconstruction + two CE terms) or ``"code"`` (MSE + 1e-3 (1 - cos))."""
    logit_scale: float = 1.0
    """Scale of the cosine logits in the CE terms (1 = econSG). [R]"""
    val_fraction: float = 0.1
    eval_every: int = 10
    """Validate every this many epochs (and after the last); the best validation total is kept."""
    seed: int = 0
    device: str = "cpu"
    cpu_threads: Optional[int] = 1
    """Intra-op threads while training on CPU (restored afterwards). The steps are tiny matrix products
    dominated by per-op overhead, where extra threads only add synchronisation (6x slower on a busy
    2-core machine). None = leave torch's setting."""

    def __post_init__(self) -> None:
        if self.loss_form not in ("paper", "code"):
            raise ValueError(f"AEConfig.loss_form must be 'paper' or 'code' (got {self.loss_form!r})")
        if self.latent_dim < 1 or self.batch_size < 2 or self.epochs < 1:
            raise ValueError("AEConfig needs latent_dim >= 1, batch_size >= 2, epochs >= 1")

    @property
    def encoder_dims(self) -> Tuple[int, ...]:
        return tuple(self.encoder_hidden) + (int(self.latent_dim),)

    def to_json(self) -> Dict:
        d = asdict(self)
        d["encoder_hidden"] = list(self.encoder_hidden)
        d["decoder_dims"] = list(self.decoder_dims)
        return d


def _epoch_indices(labels: Tensor, cfg: AEConfig, gen: torch.Generator) -> Tensor:
    n = labels.shape[0]
    if not cfg.balanced:
        return torch.randperm(n, generator=gen)
    parts = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c, as_tuple=False).squeeze(1)
        m = members.shape[0]
        if m >= cfg.samples_per_class:
            pick = members[torch.randperm(m, generator=gen)[: cfg.samples_per_class]]
        else:
            pick = members[torch.randint(m, (cfg.samples_per_class,), generator=gen)]
        parts.append(pick)
    idx = torch.cat(parts)
    return idx[torch.randperm(idx.shape[0], generator=gen)]


@torch.no_grad()
def _evaluate(model: LatentAutoencoder, x: Tensor, y: Tensor, text: Optional[Tensor], cfg: AEConfig) -> Dict[str, float]:
    model.eval()
    out: Dict[str, float] = {}
    n = x.shape[0]
    bs = 8192
    for s in range(0, n, bs):
        terms = autoencoder_loss(model, x[s : s + bs], y[s : s + bs], text, cfg.loss_form, cfg.logit_scale)
        w = min(bs, n - s) / n
        for k, v in terms.items():
            out[k] = out.get(k, 0.0) + float(v) * w
    model.train()
    return out


def _track_range(n: int, description: str, enabled: bool):
    if enabled:
        from unisem_ns.cues.layout import track

        return track(list(range(n)), description, enabled=True)
    return iter(range(n))


def train_autoencoder(
    features: ArrayLike,
    labels: Optional[ArrayLike],
    text: Optional[ArrayLike],
    cfg: Optional[AEConfig] = None,
    progress: bool = True,
) -> Tuple[LatentAutoencoder, Dict[str, List[float]]]:
    """Train the autoencoder on (fused 3D) features.

    Args:
        features: [N, D] features (normalised here; zero rows should be removed by the caller).
        labels: [N] long class indices into ``text`` (-1 = unlabelled), or None (no CE terms, plain sampling
            groups).
        text: [K, D] class text embeddings (needed by the paper form's CE terms).
        cfg: settings.
        progress: rich progress bar over epochs.

    Returns:
        ``(model, history)``: the best model by validation total loss, in eval mode on ``cfg.device``;
        ``history`` has per-validation lists ``epoch``, ``step``, ``train_<term>`` (mean since the last
        validation), ``val_<term>``, plus ``best_epoch``, ``steps`` and ``seconds`` (one-element lists).
    """
    cfg = cfg or AEConfig()
    threads = torch.get_num_threads()
    if cfg.cpu_threads and torch.device(cfg.device).type == "cpu":
        torch.set_num_threads(int(cfg.cpu_threads))
    dev = torch.device(cfg.device)
    # seeded on a forked stream: the caller's (ns-train's) random state is the same whether or not this ran
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            return _train(features, labels, text, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(features, labels, text, cfg: AEConfig, progress: bool) -> Tuple[LatentAutoencoder, Dict[str, List[float]]]:
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = F.normalize(torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features).float(), dim=-1)
    n, D = x.shape
    if n < 4:
        raise ValueError(f"train_autoencoder needs at least 4 samples (got {n})")
    y = (
        torch.full((n,), -1, dtype=torch.long)
        if labels is None
        else torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().cpu()
    )
    t = None if text is None else F.normalize(torch.as_tensor(np.asarray(text) if not isinstance(text, Tensor) else text).float(), dim=-1).to(dev)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(cfg.val_fraction * n))) if cfg.val_fraction > 0 else 0
    n_val = min(n_val, n - 2)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    x_tr, y_tr = x[tr_idx], y[tr_idx]
    x_val, y_val = (x[val_idx], y[val_idx]) if n_val else (x_tr, y_tr)
    x_tr_d, y_tr_d = x_tr.to(dev), y_tr.to(dev)
    x_val, y_val = x_val.to(dev), y_val.to(dev)

    model = LatentAutoencoder(D, cfg.encoder_dims, cfg.decoder_dims).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = math.ceil(_epoch_indices(y_tr, cfg, torch.Generator().manual_seed(0)).shape[0] / cfg.batch_size)
    steps_per_epoch = per_epoch
    if cfg.max_steps is not None and per_epoch * cfg.epochs > cfg.max_steps:
        steps_per_epoch = max(1, cfg.max_steps // cfg.epochs)
    history: Dict[str, List[float]] = {"epoch": [], "step": []}
    best = (math.inf, None, -1)
    running: Dict[str, float] = {}
    n_running = 0
    step = 0
    t0 = time.perf_counter()
    model.train()
    for epoch in _track_range(cfg.epochs, f"Training autoencoder (d={cfg.latent_dim}, N={n})", progress):
        idx = _epoch_indices(y_tr, cfg, gen)
        for b in range(steps_per_epoch):
            sel = idx[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if sel.shape[0] < 2:  # BatchNorm needs two rows
                break
            sel = sel.to(dev)
            terms = autoencoder_loss(model, x_tr_d[sel], y_tr_d[sel], t, cfg.loss_form, cfg.logit_scale)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            step += 1
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            n_running += 1
        last = epoch == cfg.epochs - 1
        if (epoch + 1) % cfg.eval_every == 0 or last:
            val = _evaluate(model, x_val, y_val, t, cfg)
            history["epoch"].append(epoch + 1)
            history["step"].append(step)
            for k, v in running.items():
                history.setdefault(f"train_{k}", []).append(v / max(n_running, 1))
            for k, v in val.items():
                history.setdefault(f"val_{k}", []).append(v)
            running, n_running = {}, 0
            if val["total"] < best[0]:
                best = (val["total"], copy.deepcopy(model.state_dict()), epoch + 1)
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    history["best_epoch"] = [best[2]]
    history["steps"] = [step]
    history["seconds"] = [time.perf_counter() - t0]
    return model, history


@torch.no_grad()
def encode_in_batches(model: LatentAutoencoder, x: ArrayLike, batch: int = 65536) -> Tensor:
    """g(x) in eval mode for [N, D] features (normalised first), [N, d] float32 on CPU; zero rows map to zero
    latents (they carry no feature)."""
    model.eval()
    dev = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
    out = torch.zeros(x.shape[0], model.latent_dim)
    ok = x.norm(dim=-1) > 1e-8
    rows = torch.nonzero(ok, as_tuple=False).squeeze(1)
    for s in range(0, rows.shape[0], batch):
        r = rows[s : s + batch]
        out[r] = model.encode(F.normalize(x[r], dim=-1).to(dev)).cpu()
    return out


def _json_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def save_autoencoder(model: LatentAutoencoder, path: Union[str, Path], extra: Optional[Dict] = None) -> Path:
    """Write ``path`` (state_dict, via ``torch.save``) and ``path.with_suffix('.json')`` (dims + ``extra``),
    both atomically. Returns ``path``."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path) as f:
        torch.save(state, f)
    meta = {"format": "unisem-econsg-ae/1", **model.dims()}
    if extra:
        meta["extra"] = extra
    atomic_write_json(_json_path(path), meta)
    return path


def load_autoencoder(path: Union[str, Path], device: str = "cpu") -> LatentAutoencoder:
    """Rebuild a model written by :func:`save_autoencoder` (``torch.load(weights_only=True)``), in eval mode."""
    path = Path(path)
    from unisem_ns.data.scene_io import InputError

    try:
        meta = json.loads(_json_path(path).read_text())
        model = LatentAutoencoder(meta["in_dim"], meta["encoder_dims"], meta["decoder_dims"])
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types (struct.error, UnpicklingError, ...)
        raise InputError(f"{path}: unreadable econSG autoencoder ({type(e).__name__}: {e}); delete it and rerun the preparation") from None
    return model.to(device).eval()
