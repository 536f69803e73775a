"""The UniSem feed-forward predictor: V unposed views -> pixel-aligned semantic Gaussians in one pass.

Architecture (Uni3R/LSM lineage, DUSt3R module names so published backbones load by key):

- a shared-weight ViT encoder (``patch_embed``, ``enc_blocks``, ``enc_norm``) applied to every view;
- a decoder with attention across views (``decoder_embed``, ``dec_blocks`` for the reference view 1, ``dec_blocks2``
  for the others, ``dec_norm``): each block does self-attention within the view, cross-attention to the tokens of
  all *other* views, and an MLP; the reference view's tokens carry a learned ``ref_view_embed`` in the others'
  memory, so every view knows which frame to express its points in;
- a DPT head (``head.dpt``) on 4 hooks (encoder output, decoder blocks L/2, 3L/4, L) giving, per pixel, a point in
  **view 1's camera frame** (OpenCV axes; no input poses), a confidence, scale, rotation, opacity, SH colour and a
  semantic latent; a 1x1 ``feature_expansion`` maps a rendered latent to the cue space.

forward(images [B, V, 3, H, W], Ks [B, V, 3, 3] | None) -> dict of [B, V, H, W, ...] Gaussians.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PredictorConfig
from .heads import DPTHead, gaussians_from_head, head_channels, init_head_bias, pixel_rays
from .predictor import PredictedGaussians, Predictor

__all__ = ["UniSemPredictor", "flatten_gaussians", "rope2d"]


def rope2d(x: Tensor, pos: Tensor, base: float = 100.0) -> Tensor:
    """2D rotary embedding (DUSt3R's RoPE2D): first half of each head rotated by y, second half by x.

    Args:
        x: [B, heads, N, Dh] (Dh divisible by 4).
        pos: [N, 2] integer (y, x) patch positions.
    """
    dh = x.shape[-1]
    half = dh // 2
    inv = 1.0 / (base ** (torch.arange(0, half, 2, device=x.device, dtype=torch.float32) / half))  # [half/2]
    out = []
    for i, coord in enumerate((pos[:, 0], pos[:, 1])):
        t = x[..., i * half:(i + 1) * half]
        freqs = coord.float()[:, None] * inv[None]  # [N, half/2]
        emb = torch.cat([freqs, freqs], dim=-1).to(x.dtype)  # [N, half]
        t1, t2 = t[..., : half // 2], t[..., half // 2:]
        rot = torch.cat([-t2, t1], dim=-1)
        out.append(t * emb.cos() + rot * emb.sin())
    return torch.cat(out, dim=-1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Self-attention with optional RoPE (keys ``qkv``, ``proj``)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, rope: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rope2d(q, pos), rope2d(k, pos)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Cross-attention (keys ``projq``, ``projk``, ``projv``, ``proj``) with an optional boolean mask."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, rope: bool):
        super().__init__()
        self.heads = heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: Tensor, mem: Tensor, xpos: Tensor, mpos: Tensor, mask: Optional[Tensor]) -> Tensor:
        b, n, c = x.shape
        m = mem.shape[1]
        h = self.heads
        q = self.projq(x).reshape(b, n, h, c // h).transpose(1, 2)
        k = self.projk(mem).reshape(b, m, h, c // h).transpose(1, 2)
        v = self.projv(mem).reshape(b, m, h, c // h).transpose(1, 2)
        if self.rope:
            q, k = rope2d(q, xpos), rope2d(k, mpos)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, rope: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias, rope)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attn, cross-attn to the memory (normalised by ``norm_y``), MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, rope: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias, rope)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads, qkv_bias, rope)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, mem: Tensor, pos: Tensor, mpos: Tensor, mask: Optional[Tensor]) -> Tensor:
        x = x + self.attn(self.norm1(x), pos)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(mem), pos, mpos, mask)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class OutputHead(nn.Module):
    """Wraps the DPT so its keys read ``head.dpt.*`` (DUSt3R: ``downstream_head1.dpt.*``)."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        out = sum(head_channels(cfg.sem_dim, cfg.sh_degree).values())
        self.dpt = DPTHead([cfg.enc_dim, cfg.dec_dim, cfg.dec_dim, cfg.dec_dim], cfg.head_layer_dims,
                           cfg.head_feature_dim, out)
        # the last layer's start (init_head_bias) is set once by UniSemPredictor, after its weight init


class UniSemPredictor(nn.Module, Predictor):
    """V unposed views -> per-pixel Gaussians in view 1's camera frame. See the module docstring.

    Implements :class:`~feedforward.predictor.Predictor` (:meth:`predict`, :meth:`features_to_cue_space`,
    :attr:`image_size`) for initialising per-scene training (:mod:`feedforward.scene_init`)."""

    def __init__(self, cfg: PredictorConfig = PredictorConfig()):
        super().__init__()
        self.cfg = cfg
        self.input_size: Optional[Tuple[int, int]] = None
        """(H, W) of the corpus it was trained on, when known (set by ``load_unisem_predictor``); not saved."""
        rope = cfg.pos_embed == "rope100"
        if rope and (cfg.enc_dim // cfg.enc_heads) % 4 or rope and (cfg.dec_dim // cfg.dec_heads) % 4:
            raise ValueError("rope100 needs head dims divisible by 4 (enc_dim/enc_heads, dec_dim/dec_heads)")
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(cfg.enc_dim, cfg.enc_heads, cfg.mlp_ratio, cfg.qkv_bias, rope) for _ in range(cfg.enc_depth)])
        self.enc_norm = nn.LayerNorm(cfg.enc_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(cfg.enc_dim, cfg.dec_dim)
        mk = lambda: DecoderBlock(cfg.dec_dim, cfg.dec_heads, cfg.mlp_ratio, cfg.qkv_bias, rope)  # noqa: E731
        self.dec_blocks = nn.ModuleList([mk() for _ in range(cfg.dec_depth)])
        self.dec_blocks2 = nn.ModuleList([mk() for _ in range(cfg.dec_depth)])
        self.dec_norm = nn.LayerNorm(cfg.dec_dim, eps=1e-6)
        self.ref_view_embed = nn.Parameter(torch.zeros(cfg.dec_dim))
        self.head = OutputHead(cfg)
        # [R] no bias: a learned constant in the cue space wins the cosine loss early (all class embeddings share a
        # large common direction) and collapses every pixel onto it; without one, the map stays linear.
        self.feature_expansion = nn.Conv2d(cfg.sem_dim, cfg.cue_dim, 1, bias=False)
        self.feature_reduction = nn.Conv2d(cfg.cue_dim, cfg.sem_dim, 1) if cfg.semantic_input == "cue" else None
        self.apply(self._init)
        init_head_bias(self.head.dpt.head[-1], cfg.sem_dim, cfg.sh_degree,
                       zero_semantic=cfg.semantic_residual and self.feature_reduction is not None,
                       weight_scale=cfg.head_init_scale)
        self._tie_semantic_maps()

    def _tie_semantic_maps(self) -> None:
        """[R] Start ``feature_expansion`` o ``feature_reduction`` as the orthogonal projection onto a random
        sem_dim-d subspace of the cue space (reduction = P^T, expansion = P, zero biases), so the lifted 2D cue
        survives the bottleneck from step 0 (cosine ranks are preserved up to random-projection distortion);
        both stay trainable. Without it the tiny model first learns only the mean cue direction."""
        if self.feature_reduction is None:
            return
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(self.cfg.cue_dim, self.cfg.sem_dim))  # [D, d] orthonormal columns
            self.feature_expansion.weight.copy_(q[:, :, None, None])
            self.feature_reduction.weight.copy_(q.T[:, :, None, None])
            self.feature_reduction.bias.zero_()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_semantic_subspace(self, cue_rows: Tensor) -> None:
        """[R] Set ``feature_expansion`` = V and ``feature_reduction`` = V^T, V [cue_dim, sem_dim] = the top
        right-singular vectors of training cue embeddings ``cue_rows`` [M, cue_dim] (uncentred PCA), so the lifted cue
        passes the bottleneck almost unchanged from step 0. A random subspace keeps only ~sem_dim/cue_dim of a cue's
        energy, and the cosine loss then prefers the mean cue direction for every pixel (observed: collapse to one
        class); the cue embeddings of a label set span far fewer than cue_dim dimensions."""
        x = torch.nn.functional.normalize(cue_rows.float(), dim=-1)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh[: self.cfg.sem_dim].T  # [D, d]
        if v.shape[1] < self.cfg.sem_dim:  # fewer rows than sem_dim: pad with random orthonormal directions
            q, _ = torch.linalg.qr(torch.cat([v, torch.randn(v.shape[0], self.cfg.sem_dim - v.shape[1])], 1))
            v = q
        self.feature_expansion.weight.copy_(v[:, :, None, None])
        if self.feature_reduction is not None:
            self.feature_reduction.weight.copy_(v.T[:, :, None, None])
            self.feature_reduction.bias.zero_()

    # ---------------------------------------------------------------------------------------------------- encode

    def _positions(self, h: int, w: int, device) -> Tensor:
        yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)

    def encode(self, images: Tensor) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
        """Shared-weight encoder. images [B, V, 3, H, W] in [0, 1] -> tokens [B, V, N, enc_dim], pos [N, 2], grid."""
        b, v, _, hh, ww = images.shape
        p = self.cfg.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image size {ww}x{hh} must be a multiple of the patch size {p}")
        x = self.patch_embed((images.reshape(b * v, 3, hh, ww) - 0.5) / 0.5)
        pos = self._positions(hh // p, ww // p, images.device)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        x = self.enc_norm(x)
        return x.reshape(b, v, -1, x.shape[-1]), pos, (hh // p, ww // p)

    def decode(self, enc: Tensor, pos: Tensor) -> List[Tensor]:
        """Cross-view decoder. enc [B, V, N, C] -> list of depth+1 token maps [B, V, N, *] (enc output first)."""
        b, v, n, _ = enc.shape
        x = self.decoder_embed(enc)
        outs = [enc]
        view_of = torch.arange(v, device=enc.device).repeat_interleave(n)  # [V*N]
        mpos = pos.repeat(v, 1)  # [V*N, 2]
        for blk_ref, blk_oth in zip(self.dec_blocks, self.dec_blocks2):
            mem = x.clone()
            mem[:, 0] = mem[:, 0] + self.ref_view_embed
            mem = mem.reshape(b, v * n, -1)
            new = []
            for idx, blk in ((slice(0, 1), blk_ref), (slice(1, v), blk_oth)):
                xs = x[:, idx]
                k = xs.shape[1]
                if k == 0:
                    continue
                q_view = torch.arange(v, device=enc.device)[idx].repeat_interleave(n)  # [k*N]
                mask = q_view[:, None] != view_of[None, :]  # attend to every other view
                new.append(self._block_views(blk, xs, mem, pos, mpos, mask))
            x = torch.cat(new, dim=1)
            outs.append(x)
        outs[-1] = self.dec_norm(outs[-1])
        return outs

    @staticmethod
    def _block_views(blk: DecoderBlock, xs: Tensor, mem: Tensor, pos: Tensor, mpos: Tensor, mask: Tensor) -> Tensor:
        """Self-attention within each view, cross-attention of every view to all other views' tokens."""
        b, k, n, c = xs.shape
        x = xs.reshape(b * k, n, c)
        x = x + blk.attn(blk.norm1(x), pos)
        xq = x.reshape(b, k * n, c)
        mask_b = mask[None, None]  # [1, 1, k*N, V*N]
        xq = xq + blk.cross_attn(blk.norm2(xq), blk.norm_y(mem), pos.repeat(k, 1), mpos, mask_b)
        xq = xq + blk.mlp(blk.norm3(xq))
        return xq.reshape(b, k, n, c)

    # --------------------------------------------------------------------------------------------------- forward

    def forward(self, images: Tensor, Ks: Optional[Tensor] = None, sem_input: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Predict pixel-aligned Gaussians.

        Args:
            images: [B, V, 3, H, W] RGB in [0, 1]; view 0 is the reference (canonical) view. No poses.
            Ks: optional [B, V, 3, 3] intrinsics (only for the per-pixel ray prior of the point channels).
            sem_input: optional [B, V, H, W, cue_dim] 2D semantic features of the views (zeros where none);
                reduced by ``feature_reduction`` and added to the latent (Uni3R's LSeg residual).

        Returns:
            dict of [B, V, H, W, ...]: means (3, view-0 OpenCV camera frame), conf, scales (3), quats (4),
            opacities, sh (K, 3), sem (sem_dim).
        """
        b, v, _, hh, ww = images.shape
        enc, pos, grid = self.encode(images)
        layers = self.decode(enc, pos)
        dd = self.cfg.dec_depth
        hooks = [0, max(1, dd * 2 // 4), max(1, dd * 3 // 4), dd]
        toks = [layers[i].reshape(b * v, layers[i].shape[2], -1) for i in hooks]
        raw = self.head.dpt(toks, grid, (hh, ww)).reshape(b, v, -1, hh, ww)
        rays = pixel_rays(Ks, hh, ww) if Ks is not None else None
        g = gaussians_from_head(raw, images, self.cfg, rays)
        if self.feature_reduction is not None and sem_input is not None:
            red = self.feature_reduction(sem_input.reshape(b * v, hh, ww, -1).permute(0, 3, 1, 2))
            g["sem"] = g["sem"] + red.permute(0, 2, 3, 1).reshape(b, v, hh, ww, -1)
        return g

    @torch.no_grad()
    def drop_semantic_head(self) -> None:
        """Zero the head's semantic channels, so the latent is the reduced 2D cue alone (the "lifted cue" ablation:
        context cues splatted on this model's geometry)."""
        last = self.head.dpt.head[-1]
        chans = head_channels(self.cfg.sem_dim, self.cfg.sh_degree)
        names = list(chans)
        start = sum(chans[k] for k in names[: names.index("sem")])
        last.weight[start:start + self.cfg.sem_dim].zero_()
        last.bias[start:start + self.cfg.sem_dim].zero_()

    def expand_features(self, feat: Tensor) -> Tensor:
        """Rendered latent [C, H, W, sem_dim] -> cue-space features [C, H', W', cue_dim] (not normalised)."""
        x = feat.permute(0, 3, 1, 2)
        if self.cfg.expansion_downsample != 1.0:
            x = F.interpolate(x, scale_factor=self.cfg.expansion_downsample, mode="bilinear", align_corners=False)
        return self.feature_expansion(x).permute(0, 2, 3, 1)

    def expand_latents(self, latents: Tensor) -> Tensor:
        """Per-Gaussian latents [..., sem_dim] -> cue space [..., cue_dim] (same 1x1 map)."""
        w = self.feature_expansion.weight[:, :, 0, 0]
        out = latents @ w.T
        return out if self.feature_expansion.bias is None else out + self.feature_expansion.bias


    # ------------------------------------------------------------------------------------- Predictor interface

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        return self.input_size

    @property
    def size_multiple(self) -> int:
        return self.cfg.patch_size

    @property
    def cue_dim(self) -> int:
        return self.cfg.cue_dim

    @property
    def feature_space(self) -> str:
        return f"unisem-latent-{self.cfg.sem_dim}"

    @torch.no_grad()
    def predict(self, images: Tensor, intrinsics: Optional[Tensor] = None,
                cues: Optional[Tensor] = None) -> PredictedGaussians:
        """One forward pass on V views ([V, 3, H, W], view 0 the reference); see
        :meth:`feedforward.predictor.Predictor.predict`. ``cues`` [V, H, W, cue_dim] feed the semantic input."""
        v, _, hh, ww = images.shape
        dev = next(self.parameters()).device
        sem_in = cues[None].to(dev).float() if cues is not None and self.feature_reduction is not None else None
        ks = intrinsics[None].to(dev).float() if intrinsics is not None else None
        g = flatten_gaussians(self(images[None].to(dev).float(), ks, sem_in))
        yy, xx = torch.meshgrid(torch.arange(hh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        pixel = torch.stack([yy.reshape(-1), xx.reshape(-1)], -1).repeat(v, 1)
        view = torch.arange(v, device=dev).repeat_interleave(hh * ww)
        return PredictedGaussians(means=g["means"], scales=g["scales"], quats=g["quats"], opacities=g["opacities"],
                                  sh=g["sh"], features=g["sem"], view_index=view, pixel=pixel,
                                  feature_space=self.feature_space, confidence=g["conf"],
                                  info={"input_size": (hh, ww)})

    def features_to_cue_space(self, features: Tensor) -> Tensor:
        return self.expand_latents(features)


def flatten_gaussians(g: Dict[str, Tensor], b: int = 0) -> Dict[str, Tensor]:
    """Sample ``b``'s Gaussians as flat [N = V*H*W, ...] tensors (the renderer's layout)."""
    out = {}
    for k, t in g.items():
        x = t[b]
        lead = x.shape[:3]  # V, H, W
        out[k] = x.reshape(lead.numel(), *x.shape[3:])
    return out
