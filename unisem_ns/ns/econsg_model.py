"""``ns-train econsg``: econSG in Nerfstudio (docs/methods/econsg.md).

The offline part (CRR on the 2D cues, back-projection fusion into a 3D contextual space, the latent autoencoder)
lives in :mod:`unisem_ns.econsg` and runs once per scene and setting, cached, when the datamanager starts. This
module is the glue: the datamanager runs the preparation and hands the per-view CRR labels, weights and latent
targets to the batches; the model initialises Gaussians from the fused points and their latents, renders the
normalised latent, and trains with L_color + λ_sem·L1(F, F̂_z) + λ_2d·w·CE(⟨F, T_z⟩, CRR label)/ln K. Text
queries go text → encoder → AE encoder → latent through the shared language field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Type

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager
from nerfstudio.utils.rich_utils import CONSOLE
from torch import nn
from torch.nn import Parameter

from unisem_ns.data.scene_io import InputError
from unisem_ns.econsg.prepare import EconSGCache, EconSGPrepConfig, default_out, prepare_econsg
from unisem_ns.ns.data import UnisemCueDatamanagerConfig, UnisemDataset
from unisem_ns.ns.dataparser import exit_on_input_error
from unisem_ns.ns.semantic import SemanticEvalMixin
from unisem_ns.ns.splat_model import UnisemSplatBaseConfig, UnisemSplatModel

# ------------------------------------------------------------------------------------------------- data needs


class EconSGDataset(UnisemDataset):
    """Training views carry econSG's per-view targets from the preparation cache:
    ``econsg_labels`` [H, W] long (0 = ignore, k + 1 = class k), ``econsg_weights`` [H, W] (boundary weights),
    ``econsg_latent`` [H, W, d] (the AE-encoded, CRR-regularised 2D feature)."""

    def get_metadata(self, data: Dict) -> Dict:
        out = super().get_metadata(data)
        cache: Optional[EconSGCache] = self.metadata.get("econsg_cache")
        if cache is None or self.is_eval:
            return out
        stem = Path(self._dataparser_outputs.image_filenames[data["image_idx"]]).stem
        try:
            labels, weights, latent = cache.load_labels(stem), cache.load_weights(stem), cache.load_latents(stem)
        except (OSError, ValueError) as e:
            raise exit_on_input_error(
                InputError(f"{cache.out}: econSG cache unreadable for view {stem} ({e}); delete the folder to rebuild it")
            ) from None
        out["econsg_labels"] = torch.from_numpy(labels + 1)  # 0 = ignore, k + 1 = class k
        out["econsg_weights"] = torch.from_numpy(weights.astype(np.float32))
        out["econsg_latent"] = torch.from_numpy(latent.astype(np.float16))
        return out


@dataclass
class EconSGDatamanagerConfig(UnisemCueDatamanagerConfig):
    """Full-image datamanager that first runs (or reuses) econSG's per-scene preparation."""

    _target: Type = field(default_factory=lambda: EconSGDatamanager)
    prep: EconSGPrepConfig = field(default_factory=lambda: EconSGPrepConfig(fusion_voxel=0.05))
    """CRR thresholds, fusion and autoencoder settings (latent dim d, loss form), ablations (use_crr, use_ae).
    Fusion voxel 0.05 m (econSG: 0.02 m on mesh vertices) keeps the fused cloud, hence the initial Gaussians,
    near the size of a CPU-trainable seed cloud. [R]"""
    depth_from: Optional[Path] = None
    """config.yml of an RGB-pretrained unisem-splat run on this scene: its rendered depth replaces GT depth for
    the back-projection (needed for scenes without depths/)."""


class EconSGDatamanager(FullImageDatamanager[EconSGDataset]):
    config: EconSGDatamanagerConfig

    def create_train_dataset(self) -> EconSGDataset:
        outputs = self.train_dataparser_outputs
        scene = Path(outputs.metadata["scene_dir"])
        provider = None
        if self.config.depth_from is not None:
            provider = rendered_depth_provider(self.config.depth_from, outputs)
        try:
            cache = prepare_econsg(scene, out=cache_dir(scene, self.config.prep), cfg=self.config.prep,
                                   depth_provider=provider, progress=True)
        except InputError as e:
            raise exit_on_input_error(e) from None
        outputs.metadata["econsg_cache"] = cache
        # The model maps the cache's world-frame points into Nerfstudio's normalised frame.
        outputs.metadata["dataparser_transform"] = outputs.dataparser_transform
        outputs.metadata["dataparser_scale"] = float(outputs.dataparser_scale)
        return super().create_train_dataset()


def cache_dir(scene: Path, prep: EconSGPrepConfig) -> Path:
    """``scene/econsg/d{d}-<settings hash>``: one folder per setting, so ablation runs on one scene keep their
    own caches (and ``ns-eval`` of each finds its own) instead of overwriting each other's."""
    key = hashlib.sha1(json.dumps(prep.to_json(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = default_out(scene, prep)
    return base.with_name(f"{base.name}-{key}")


def rendered_depth_provider(config_path: Path, outputs) -> Callable[[str], np.ndarray]:
    """Depth in world metres of each training view, rendered by a trained unisem-splat run of the same scene."""
    from nerfstudio.utils.eval_utils import eval_setup

    if not Path(config_path).exists():
        raise exit_on_input_error(
            InputError(f"{config_path}: no such run config; train one with `ns-train unisem-splat --data <scene>`")
        )
    _, pipeline, _, _ = eval_setup(Path(config_path), test_mode="inference")
    stems = [Path(f).stem for f in outputs.image_filenames]
    scale = float(outputs.dataparser_scale)

    @torch.no_grad()
    def depth(stem: str) -> np.ndarray:
        camera = outputs.cameras[stems.index(stem) : stems.index(stem) + 1].to(pipeline.device)
        rendered = pipeline.model.get_outputs_for_camera(camera)["depth"][..., 0]
        return (rendered / scale).cpu().numpy().astype(np.float32)

    return depth


# ------------------------------------------------------------------------------------------------- model


@dataclass
class EconSGModelConfig(UnisemSplatBaseConfig):
    """Semantic Gaussians with a low-dim latent from econSG's autoencoder (its width d is the prepared cache's,
    set by ``--pipeline.datamanager.prep.ae.latent-dim``; there is no ``feature_dim`` setting)."""

    _target: Type = field(default_factory=lambda: EconSGModel)
    lambda_sem: float = 20.0
    """Weight of L_semantic = L1(rendered latent, AE-encoded 2D target) (econSG: lambda_dsem 20)."""
    lambda_2d: float = 1.0
    """Weight of the CE against the CRR label map (econSG: lambda_dlbl 1)."""
    ce_temperature: float = 1.0
    """Logits = <F, T_z> / temperature; econSG's code uses raw cosine (1.0). [R]"""
    use_confidence_weights: bool = True
    """Multiply the CE per pixel by CRR's boundary weight w(u) (econSG: --confidence_on)."""
    max_init_points: int = 30000
    """Initialise from at most this many fused points (a fixed random subset); densification adds the rest."""
    query_space: Literal["decoded", "latent"] = "decoded"
    """Where free-text queries meet the render: 'decoded' (AE decoder back to the encoder space; econSG's "more
    faithful" option) or 'latent' (query encoded by the AE encoder). The closed label set always uses the latent."""
    latent_init: bool = True
    """Initialise Gaussians from the fused 3D points and their latents (ablation: False = seed point cloud and
    random latents)."""


class EconSGModel(SemanticEvalMixin, UnisemSplatModel):
    config: EconSGModelConfig
    method_name = "econsg"

    @property
    def feature_dim(self) -> int:
        """Width d of the rendered latent: the prepared cache's (its text latents' width), set in populate_modules."""
        return self.latent_dim

    def populate_modules(self):
        metadata = self.kwargs["metadata"]
        cache: EconSGCache = metadata["econsg_cache"]
        text_latents = torch.as_tensor(cache.text_latents(), dtype=torch.float32)
        self.latent_dim = int(text_latents.shape[1])
        # a feed-forward initialisation (init_from_predictor) replaces the fused-point init
        fused_init = self.config.latent_init and self.config.init_from_predictor is None
        points = cache.load_points() if fused_init else None
        if points is not None and len(points["xyz"]) > self.config.max_init_points:
            keep = np.random.default_rng(0).choice(len(points["xyz"]), self.config.max_init_points, replace=False)
            points = {k: v[np.sort(keep)] for k, v in points.items()}
        if points is not None:
            xyz = torch.as_tensor(points["xyz"], dtype=torch.float32)
            transform = torch.as_tensor(metadata["dataparser_transform"], dtype=torch.float32)
            xyz = (xyz @ transform[:3, :3].T + transform[:3, 3]) * float(metadata["dataparser_scale"])
            self.seed_points = (xyz, torch.as_tensor(points["rgb"], dtype=torch.float32))
        super().populate_modules()
        if points is not None:
            latent = torch.as_tensor(points["latent"], dtype=torch.float32)
            self.gauss_params["features_sem"].data = F.normalize(latent, dim=-1)
        self.register_buffer("text_latents", F.normalize(text_latents, dim=-1))
        self.train_class_names: List[str] = list(cache.class_names)
        # Frozen; the None case is the no-AE ablation (features live in the encoder's full space).
        self.autoencoder: Optional[nn.Module] = cache.load_autoencoder() if cache.use_ae else None
        if self.autoencoder is not None:
            self.autoencoder.eval().requires_grad_(False)
        self.setup_semantics(metadata)
        if self.autoencoder is not None:
            # Closed set: text -> encoder -> AE encoder -> argmax in the latent (docs/methods/econsg.md, step 14).
            # Free-text queries: the rendered latent decoded by the AE (the latent only separates the training
            # vocabulary). [R]
            self.query_field.set_text_to_latent(lambda emb: self.autoencoder.encode(emb.float()))
            if self.config.query_space == "decoded":
                self.query_field.set_decoder(lambda z: self.autoencoder.decode(z.float()))

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        return super().get_gaussian_param_groups()

    def semantic_init(self, cue_features: torch.Tensor) -> Optional[torch.Tensor]:
        """Predicted cue-space features [N, C] -> econSG's unit d-dim latent [N, d]: normalised, then through the
        cache's frozen AE encoder (the map text queries take); without an AE (the no-AE ablation, d = C) just
        normalised. None when the widths do not fit (random init kept)."""
        cache: EconSGCache = self.kwargs["metadata"]["econsg_cache"]
        x = F.normalize(cue_features.float(), dim=-1)
        if cache.use_ae:
            from unisem_ns.econsg.autoencoder import encode_in_batches

            ae = cache.load_autoencoder().eval()
            if int(ae.in_dim) != x.shape[1]:  # the AE's input width is not the predictor's cue width
                return None
            z = torch.as_tensor(encode_in_batches(ae, x)).float()
        else:
            z = x
        return F.normalize(z, dim=-1) if z.shape[1] == self.latent_dim else None

    def gaussian_features(self, features_sem: torch.Tensor) -> torch.Tensor:
        # econSG normalises each Gaussian's latent before blending, and the blended pixel after.
        return F.normalize(features_sem, dim=-1)

    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(outputs["features"], dim=-1)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "autoencoder", None) is not None:
            self.autoencoder.eval()  # frozen: its BatchNorm must keep running statistics
        return self

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        if not self.training or "econsg_latent" not in batch:
            return losses
        feats = F.normalize(outputs["features"], dim=-1)  # [H, W, d]
        target = batch["econsg_latent"].to(self.device).float()
        valid = target.abs().sum(-1) > 0
        if valid.any():
            losses["semantic_loss"] = self.config.lambda_sem * (feats[valid] - F.normalize(target[valid], dim=-1)).abs().mean()
        labels = batch["econsg_labels"].to(self.device)
        labelled = labels > 0
        if labelled.any():
            logits = feats[labelled] @ self.text_latents.T / self.config.ce_temperature  # [M, K]
            ce = F.cross_entropy(logits, labels[labelled] - 1, reduction="none")
            if self.config.use_confidence_weights:
                ce = ce * batch["econsg_weights"].to(self.device)[labelled]
            losses["ce_loss"] = self.config.lambda_2d * ce.mean() / math.log(self.text_latents.shape[0])
        return losses
