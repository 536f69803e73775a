"""Nerfstudio glue for GSemSplat (``ns-train gsemsplat``): thin, the work is in the nerfstudio-free core.

- :class:`GSemSplatDataManager` samples view pairs of a corpus (2 context views + T targets with GT poses relative
  to view 1, per-mask cues, and the dense context-aware targets of ``dense_features/`` when the scenes have them);
  its ``train_dataset`` is one held-out *display* pair (its two context views and the target between them, in
  view 1's frame) for the viewer and ``unisem-query``.
- :class:`GSemSplatModel` (a :class:`feedforward.ns_pipeline.FeedForwardModel`, so a SplatfactoModel for ns-viewer)
  computes :func:`~feedforward.gsemsplat.training.gsemsplat_losses` in ``forward`` and renders the display pair's
  prediction with a :class:`DualHeadQueryField`: both latents are decoded, and each text query uses the head whose
  smoothed relevancy has the larger maximum (GSemSplat's rule).
- :class:`GSemSplatPipeline`: ``ns-eval`` = :func:`feedforward.gsemsplat.evaluate.evaluate_pairs` on held-out pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn import Parameter

from unisem_ns.data.scene_io import InputError
from unisem_ns.language.query_field import LanguageQueryField, composite, relevancy
from unisem_ns.metrics.masks import box_mean
from unisem_ns.ns.dataparser import exit_on_input_error
from unisem_ns.utils.atomic import atomic_write_json

from ..ns_pipeline import (FeedForwardDataManager, FeedForwardDataManagerConfig, FeedForwardModel,
                           FeedForwardPipeline, FeedForwardPipelineConfig)
from ..sampling import ViewSet, make_view_set, protocol_view_sets
from .evaluate import GSemSplatEvalConfig, evaluate_pairs, flatten_eval
from .model import LATENT_DIM, GSemSplatConfig, GSemSplatPredictor
from .training import GSemSplatTrainConfig, gsemsplat_losses, sample_pair

__all__ = ["GSemSplatDataManagerConfig", "GSemSplatDataManager", "GSemSplatModelConfig", "GSemSplatModel",
           "GSemSplatPipelineConfig", "GSemSplatPipeline", "DualHeadQueryField"]


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GSemSplatDataManagerConfig(FeedForwardDataManagerConfig):
    """A corpus (``index.json``); each step one view pair (2 context views) and ``targets`` target views."""

    _target: Type = field(default_factory=lambda: GSemSplatDataManager)
    views: Tuple[int, ...] = (2,)
    """Context views per sample: GSemSplat takes pairs (fixed)."""
    display_views: int = 2
    """Context views of the displayed prediction (a pair)."""
    context_features: bool = True
    """Read the dense context-aware targets from each scene's dense_features/ (skipped for scenes without it;
    make them with `unisem-make-corpus --dense True` or `unisem-preprocess --dense`)."""


class GSemSplatDataManager(FeedForwardDataManager):
    config: GSemSplatDataManagerConfig

    def __init__(self, config: GSemSplatDataManagerConfig, device="cpu", test_mode="val", world_size: int = 1,
                 local_rank: int = 0, **kwargs):
        if tuple(config.views) != (2,):
            raise exit_on_input_error(InputError(
                f"--pipeline.datamanager.views {list(config.views)}: GSemSplat trains on view pairs; use 2"))
        config.display_views = 2
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank)
        # the display pair: the first pair of the 2-view protocol (context i-1, i+1) with its target i
        context, targets = protocol_view_sets(self.display_scene, 2, 1)[0]
        self.display_view_set = make_view_set(self.display_scene, context, targets)
        self.train_dataset = InputDataset(self._display_outputs(self.display_view_set))
        self.train_dataset.scene_dir = self.display_scene.path
        self.eval_dataset = self.train_dataset
        missing = [s.name for s in self.train_scenes if not _has_dense(s)]
        if config.context_features and missing:
            CONSOLE.log(f"[yellow]gsemsplat: {len(missing)} training scene(s) lack dense_features/ (e.g. {missing[0]});"
                        " their context-aware loss is skipped (unisem-make-corpus --dense True)")

    def next_train(self, step: int):
        self.train_count += 1
        _, vs, ctx = sample_pair(self.train_scenes, self.rng, self.config.targets, self.config.strides,
                                 self.config.context_features)
        vs = vs.to(self.device)
        if ctx is not None:
            ctx = (ctx[0].to(self.device), ctx[1].to(self.device))
        return (vs, ctx), {"view_set": vs}

    def get_train_rays_per_batch(self) -> int:
        return int(np.prod(self.display_view_set.size)) * (2 + self.config.targets)


def _has_dense(scene) -> bool:
    from .training import has_dense_features

    return has_dense_features(scene)


# ---------------------------------------------------------------------------------------------------------------
# query field
# ---------------------------------------------------------------------------------------------------------------


class DualHeadQueryField(LanguageQueryField):
    """Queries over two decoded heads side by side (features ``[H, W, 2 D]`` = region | context, unit rows).

    ``relevancy_{i}`` of query i comes from the head whose ``0.5 (r + box_mean_30(r))`` has the larger maximum
    (GSemSplat's head choice, :mod:`unisem_ns.metrics.open_vocab`); ``last_heads`` holds the choices (0 = region,
    1 = context). The closed label set (``segmentation``) is classified on the normalised sum of the two heads
    (the label with the largest summed cosine)."""

    last_heads: List[int] = []

    @torch.no_grad()
    def query_outputs(self, features: torch.Tensor, rgb: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if features.ndim != 3 or features.shape[-1] % 2:
            raise ValueError(f"DualHeadQueryField expects [H, W, 2 D] features, got {tuple(features.shape)}")
        h, w, d2 = features.shape
        d = d2 // 2
        heads = (features[..., :d], features[..., d:])
        queries, pos = self._queries, self._pos
        self._queries, self._pos = [], None  # the parent computes the label set only
        try:
            out = super().query_outputs(F.normalize(heads[0] + heads[1], dim=-1), rgb)
        finally:
            self._queries, self._pos = queries, pos
        if pos is None:
            return out
        p = F.normalize(pos.to(features.device).float(), dim=-1)
        neg = F.normalize(self.negatives().to(features.device).float(), dim=-1)
        rels = [relevancy(hd.reshape(-1, d).float(), p, neg, self.temperature).reshape(h, w, -1) for hd in heads]
        self.last_heads = []
        for q in range(p.shape[0]):
            scores = [float((0.5 * (r[..., q] + box_mean(r[..., q], 30))).max()) for r in rels]
            best = 0 if scores[0] >= scores[1] else 1
            self.last_heads.append(best)
            r = rels[best][..., q:q + 1]
            out[f"relevancy_{q}"] = r
            out[f"composited_{q}"] = composite(r, rgb)
        return out


# ---------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GSemSplatModelConfig(ModelConfig):
    """GSemSplat's pair predictor (sizes in ``predictor``, loss weights in ``loss``)."""

    _target: Type = field(default_factory=lambda: GSemSplatModel)
    predictor: GSemSplatConfig = field(default_factory=GSemSplatConfig)
    """Sizes and init (``--pipeline.model.predictor.freeze-backbone True`` freezes the ViT encoder/decoder as the
    release does on MASt3R; ``freeze-pointmap-head`` the pointmap DPTs)."""
    loss: GSemSplatTrainConfig = field(default_factory=GSemSplatTrainConfig)
    """Loss weights and mask tolerance (``lr`` / ``grad_clip`` here are unused by ns-train: set the optimizer's)."""
    evaluation: GSemSplatEvalConfig = field(default_factory=GSemSplatEvalConfig)
    """ns-eval: held-out pairs, both query protocols, raw-cue and GT-geometry oracle rows."""
    backbone_checkpoint: Optional[Path] = None
    """Published MASt3R / DUSt3R / CroCo checkpoint for the backbone and pointmap heads (e.g.
    MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth; set the predictor sizes to the published ones)."""
    gsemsplat_checkpoint: Optional[Path] = None
    """GSemSplat's released checkpoint (or one written by save_gsemsplat): the whole model; the sizes come from the
    file when it stores them, else from --pipeline.model.predictor. Loaded after backbone_checkpoint."""
    label_head: Literal["dual"] = "dual"
    """Features of the closed label set / language_features: the normalised sum of both decoded heads."""
    background_color: Literal["black", "white"] = "black"
    """Background of renders in the viewer."""


class GSemSplatModel(FeedForwardModel):
    """The GSemSplat predictor inside Nerfstudio (SemanticHead: query field over both decoded heads)."""

    config: GSemSplatModelConfig  # type: ignore[assignment]

    def populate_modules(self):
        cfg = self.config
        self.predictor = GSemSplatPredictor(cfg.predictor)
        from .checkpoint import load_backbone_weights, load_gsemsplat_checkpoint

        try:
            if cfg.backbone_checkpoint is not None:
                rep = load_backbone_weights(self.predictor, cfg.backbone_checkpoint)
                CONSOLE.log(f"gsemsplat backbone: loaded {len(rep['loaded'])} tensors from {cfg.backbone_checkpoint}")
            if cfg.gsemsplat_checkpoint is not None:
                self.predictor = load_gsemsplat_checkpoint(cfg.gsemsplat_checkpoint, cfg.predictor).train()
                CONSOLE.log(f"gsemsplat: loaded the whole model from {cfg.gsemsplat_checkpoint}")
        except InputError as e:
            raise exit_on_input_error(e) from None
        self.predictor.set_frozen(cfg.predictor.freeze_backbone, cfg.predictor.freeze_pointmap_head)
        self.step = 0
        self.total_steps = None
        self.background_color = torch.zeros(3) if cfg.background_color == "black" else torch.ones(3)
        self.crop_box = None
        self._display: Optional[ViewSet] = None
        self._display_gaussians: Optional[Dict[str, torch.Tensor]] = None
        self.gauss_params = torch.nn.ParameterDict()
        meta = self.kwargs.get("metadata") or {}
        self.const_depth = meta.get("const_depth")
        self.class_names: List[str] = list(meta.get("class_names") or [])
        self.eval_labels = self.class_names[1:]
        self.text_encoder = None
        self.query_field = None
        if "cue_encoder" in meta:
            from unisem_ns.language.encoders import make_text_encoder
            from unisem_ns.ns.semantic import ViewerQueryControls

            self.text_encoder = make_text_encoder(meta["cue_encoder"])
            if self.text_encoder.dim != self.predictor.cfg.text_dim:
                raise exit_on_input_error(InputError(
                    f"the corpus cues are {self.text_encoder.dim}-d ({meta['cue_encoder'].get('name', '?')}) but "
                    f"--pipeline.model.predictor.text-dim is {self.predictor.cfg.text_dim}; set it to "
                    f"{self.text_encoder.dim}"))
            self.query_field = DualHeadQueryField(self.text_encoder)
            self._labels_pending = bool(self.eval_labels)
            self.query_controls = ViewerQueryControls(self.query_field, self.eval_labels)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        params = [p for p in self.predictor.parameters() if p.requires_grad]
        if not params:
            raise exit_on_input_error(InputError("every predictor parameter is frozen; unfreeze something to train"))
        return {"predictor": params}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        if not any(k.startswith("predictor.") for k in state_dict):
            raise exit_on_input_error(InputError(
                "the checkpoint was written by another method (no predictor.* weights); load a gsemsplat run's "
                "config.yml"))
        return torch.nn.Module.load_state_dict(self, state_dict, strict=False)

    def get_outputs(self, batch) -> Dict:  # type: ignore[override]
        if isinstance(batch, Cameras):
            return self.get_outputs_for_camera(batch)
        vs, ctx = batch if isinstance(batch, tuple) else (batch, None)
        losses, stats = gsemsplat_losses(self.predictor, vs, self.config.loss, context_features=ctx)
        return {"losses": losses, "stats": stats}

    def predict_display(self, vs: ViewSet) -> Dict[str, torch.Tensor]:
        from .evaluate import predict_flat

        return predict_flat(self.predictor, vs)

    @property
    def display_sh_degree(self) -> int:
        return self.predictor.cfg.sh_degree

    def query_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Both decoded heads side by side (the dual-head query field picks one per query)."""
        return self.decoded_heads(outputs)

    def decoded_heads(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[H, W, 2 D]: the rendered region and context latents through their decoders, each unit-normalised."""
        lat = outputs["features"][None]
        reg = self.predictor.decode(lat[..., :LATENT_DIM], "region")[0]
        ctx = self.predictor.decode(lat[..., LATENT_DIM:2 * LATENT_DIM], "context")[0]
        return torch.cat([F.normalize(reg, dim=-1), F.normalize(ctx, dim=-1)], -1)

    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[H, W, D] unit features: the normalised sum of the two decoded heads (``label_head = "dual"``)."""
        both = self.decoded_heads(outputs)
        d = both.shape[-1] // 2
        return F.normalize(both[..., :d] + both[..., d:], dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# pipeline
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GSemSplatPipelineConfig(FeedForwardPipelineConfig):
    _target: Type = field(default_factory=lambda: GSemSplatPipeline)
    datamanager: DataManagerConfig = field(default_factory=GSemSplatDataManagerConfig)
    model: ModelConfig = field(default_factory=GSemSplatModelConfig)


class GSemSplatPipeline(FeedForwardPipeline):
    """Pair training; ``ns-eval`` scores held-out pairs (:func:`~feedforward.gsemsplat.evaluate.evaluate_pairs`)."""

    def init_predictor(self) -> None:
        """Nothing to set from the corpus: published weights are loaded by the model's config."""

    @torch.no_grad()
    def get_average_eval_image_metrics(self, step: Optional[int] = None, output_path: Optional[Path] = None,
                                       get_std: bool = False) -> Dict[str, float]:
        """Held-out pairs: mIoU / localisation per row and protocol, masked PSNR, depth, time per pair."""
        self.eval()
        model = self.model
        if model.text_encoder is None:
            raise exit_on_input_error(InputError(
                f"{self.datamanager.config.data}: the corpus scenes have no language_features/encoder.json, so "
                "there is nothing to query; make the corpus with unisem-make-corpus"))
        results = evaluate_pairs(model.predictor, self.datamanager.eval_scenes(), model.text_encoder,
                                 model.config.evaluation, device=str(model.device), log=CONSOLE.log)
        if output_path is not None:
            Path(output_path).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(output_path) / "gsemsplat_eval.json", results)
        self.train()
        return flatten_eval(results)
