"""``ns-train unified-lift``: Unified-Lift in Nerfstudio (docs/methods/unified_lift.md).

unisem-splat's 16-d per-Gaussian feature, trained with the contrastive loss on raw per-view SAM ids, plus a
global object codebook read out by argmax (no clustering). The losses live in :mod:`unisem_ns.unified_lift`;
this module is the glue: data needs (``object_mask`` per training view, language cues when the scene has
them), the codebook's optimizer group, instance outputs for the viewer (colours, click-to-highlight), scene-level
PQ in ``ns-eval``, and text queries that select instances through the shared language field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager
from torch import nn
from torch.nn import Parameter

from unisem_ns.capabilities import InstanceHead
from unisem_ns.language.query_field import palette
from unisem_ns.ns.pipeline import UnisemPipeline, UnisemPipelineConfig
from unisem_ns.ns.data import UnisemDatamanagerConfig, UnisemDataset
from unisem_ns.ns.semantic import SemanticEvalMixin
from unisem_ns.ns.splat_model import UnisemSplatModel, UnisemSplatModelConfig
from unisem_ns.unified_lift import (
    UnifiedLiftLossConfig,
    centre_similarity,
    cluster_centres,
    cluster_gaussian_features,
    knn_feature_regulariser,
    unified_lift_losses,
)
from unisem_ns.unified_lift import instance_head as head

HIGHLIGHT_COLOR = (1.0, 0.15, 0.1)


# ------------------------------------------------------------------------------------------------- data needs


class UnifiedLiftDataset(UnisemDataset):
    """Training views carry ``object_mask`` (raw SAM ids, [H, W]); and the 2D language cues when the scene has
    them, which only name instances for text queries (the instance losses never read them)."""

    load_object_masks = True

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.load_language_cues = "cue_encoder" in self.metadata and not self.is_eval


@dataclass
class UnifiedLiftDatamanagerConfig(UnisemDatamanagerConfig):
    _target: Type = field(default_factory=lambda: FullImageDatamanager[UnifiedLiftDataset])
    requires_object_masks: ClassVar[bool] = True


# ------------------------------------------------------------------------------------------------- model


@dataclass
class UnifiedLiftModelConfig(UnisemSplatModelConfig):
    """Contrastive Gaussian features + a global object codebook; instance id = argmax codebook similarity."""

    _target: Type = field(default_factory=lambda: UnifiedLiftModel)
    feature_dim: int = 16
    """Per-Gaussian instance feature width (the codebook's width)."""
    codebook_size: int = 256
    """Number of object codes L (the most instances a scene can hold)."""
    losses: UnifiedLiftLossConfig = field(default_factory=UnifiedLiftLossConfig)
    """Loss weights, temperatures and ablation switches (use_codebook, area_aware, use_concentration,
    use_noise_filter)."""
    inference: Literal["codebook", "cluster"] = "codebook"
    """'codebook': id = argmax codebook similarity (the method). 'cluster': HDBSCAN over the Gaussian features
    and nearest-centre pixels (the paper's clustering baseline; train it with --losses.use-codebook False)."""
    cluster_min_size: int = 50
    """HDBSCAN min_cluster_size (sampled pixels) for inference='cluster'."""
    cluster_views: int = 20
    """Training views rendered for the clustering baseline."""
    cluster_samples: int = 20000
    """Rendered pixel features sampled (over those views) for HDBSCAN."""
    live_code_min_views: float = 2.0
    """[R] Inference takes the argmax over *live* codes only: those the Hungarian mapping assigned, on a decaying
    average over recent steps (``code_usage_decay``), in at least this many training views' worth of steps (usage
    >= live_code_min_views / number of training views). Codes never or only briefly assigned (early steps,
    split fragments) keep a half-trained entry that otherwise wins scattered pixels between objects, each one a
    false segment in PQ. 0 = every code competes (the paper)."""
    duplicate_code_cos: float = 0.75
    """[R] Among the live codes, one whose direction is within this cosine of a more-used live code is a duplicate
    (a split mask's second entry, pulled onto the same object by the concentration loss) and does not compete at
    inference; 1 = keep every live code."""
    refine_radius: int = 2
    """[R] Edge-aware refinement of rendered instance maps (views, ``ns-eval``, ``unisem-query``): before the argmax,
    each id's score map (codebook probabilities over the competing codes; cosine to the centres for 'cluster') is
    averaged over a (2r+1)^2 window with weights exp(-d^2 / 2 sigma_space^2 - |rgb_p - rgb_q|^2 / 2 sigma_rgb^2) on
    the rendered RGB, which moves each boundary onto the render's colour edge. 0 = plain argmax (the paper).
    Per-Gaussian ids (PLY export, viewer clicks) are not affected."""
    refine_sigma_space: float = 1.5
    """Spatial std (pixels) of the edge-aware refinement."""
    refine_sigma_rgb: float = 0.1
    """Colour std (RGB in [0, 1], Euclidean) of the edge-aware refinement: neighbours whose rendered colour differs
    by much more than this do not vote."""
    code_usage_decay: float = 0.999
    """Per-step decay of the code-usage average (about the last 1/(1-decay) steps count)."""
    language_decay: float = 0.995
    """Per-step decay of the running per-instance language embedding (recent views count more, when ids have
    settled)."""
    codebook_start_step: int = 0
    """Train only the contrastive feature branch before this step (0 = from the start, as the paper). A later
    start lets features separate first, so each object's best-matching code is the same in every view. [R]"""
    knn_feature_weight: float = 1e-6
    """[R] Weight of the 3D kNN regulariser on the Gaussian features (Gaussian Grouping's 3D loss on unit features,
    ``unisem_ns.unified_lift.knn_regulariser``; Unified-Lift's code carries it switched off, 0 = the paper). Each
    step, ``knn_samples`` Gaussians are pulled towards their ``knn_k`` nearest Gaussians' feature directions, so
    Gaussians the training renders hardly show stop carrying stray ids into novel views. 1e-6 is the contrastive
    loss's weight (with Adam, the two share the feature update); much larger weights over-smooth."""
    knn_k: int = 5
    """Neighbours per sampled Gaussian for the kNN regulariser (Gaussian Grouping: 5)."""
    knn_samples: int = 512
    """Gaussians sampled per step for the kNN regulariser."""
    stop_split_at: int = 1000
    """Densify until this step. [R] 1000: Unified-Lift densifies for the first third of its 30k steps (until 10k);
    1000 is the same third of ns-train's default 3000. Pass 10000 with ``--max-num-iterations 30000`` for the paper's
    schedule (or the ``unified-lift-paper`` preset)."""
    feature_init_scale: float = 0.1
    """Multiplies the initial per-Gaussian features RGB2SH(U[0,1)) (entries up to +-1.77; 1.0 = the paper). [R] 0.1:
    with CPU-length schedules (a few thousand steps) the paper's init barely moves at lr 2.5e-3; a small init
    lets the contrastive loss shape the features from the start."""

    def instance_head(self) -> head.InstanceHeadConfig:
        """The instance head's settings (``unisem_ns.unified_lift.instance_head``) from this config's fields."""
        return head.InstanceHeadConfig(
            codebook_size=self.codebook_size, feature_dim=self.feature_dim,
            live_code_min_views=self.live_code_min_views, duplicate_code_cos=self.duplicate_code_cos,
            refine_radius=self.refine_radius, refine_sigma_space=self.refine_sigma_space,
            refine_sigma_rgb=self.refine_sigma_rgb, code_usage_decay=self.code_usage_decay,
            language_decay=self.language_decay,
        )


class UnifiedLiftModel(SemanticEvalMixin, InstanceHead, UnisemSplatModel):
    """The instance capability (codebook, code usage, live codes, language per code, instance maps, per-Gaussian
    ids, PLY export) is :mod:`unisem_ns.unified_lift.instance_head`'s state and functions; this class adds the
    losses, the clustering baseline, the viewer and evaluation."""

    config: UnifiedLiftModelConfig
    method_name = "unified-lift"

    def populate_modules(self):
        super().populate_modules()
        n = self.gauss_params["means"].shape[0]
        # Unified-Lift initialises object features as RGB2SH(U[0,1)) = (u - 0.5) / C0: centred but NOT small
        # (entries up to +-1.77, rendered norm well above 1); feature_init_scale shrinks it for short schedules.
        self.gauss_params["features_sem"].data = (
            self.config.feature_init_scale * (torch.rand(n, self.config.feature_dim) - 0.5) / 0.28209479177387814
        )
        metadata = self.kwargs.get("metadata", {}) or {}
        has_language = "cue_encoder" in metadata
        dim = int(metadata["cue_encoder"]["dim"]) if has_language else 1
        # codebook, code_usage, language_sum, language_weight on self (the checkpoint keys of earlier versions)
        head.register_instance_state(self, head.init_instance_state(self.config.instance_head(), language_dim=dim))
        self._generator = torch.Generator().manual_seed(0)
        self._knn_generator = torch.Generator().manual_seed(1)  # its own stream: switching it on moves no other draw
        # inference='cluster' state, filled lazily at first use (not checkpointed: it is a pure function of the
        # trained features).
        self._cluster_centres: Optional[torch.Tensor] = None
        self.selected_instance: Optional[int] = None
        if has_language:
            self.setup_semantics(metadata)
        else:  # instances only: SemanticHead with no query field
            self.query_field = None
            self.class_names, self.eval_labels = list(metadata.get("class_names") or []), []
        from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerControl

        self.viewer_control = ViewerControl()
        self.select_button = ViewerButton("Click to select an object", cb_hook=self._arm_click)

    def semantic_init(self, cue_features: torch.Tensor) -> Optional[torch.Tensor]:
        """None: the feature channel holds instance features, not semantics; a feed-forward initialisation sets
        the geometry and colours only (the features start as above)."""
        return None

    def training_state(self) -> Dict[str, Any]:
        # the pixel-pair and kNN sample streams continue where they were
        return {**super().training_state(), "generator": self._generator.get_state(),
                "knn_generator": self._knn_generator.get_state()}

    def load_training_state(self, state: Dict[str, Any]) -> None:
        super().load_training_state(state)
        self._generator.set_state(state["generator"])
        self._knn_generator.set_state(state["knn_generator"])

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = super().get_param_groups()
        groups["codebook"] = list(self.codebook.parameters())
        return groups

    # ------------------------------------------------------------------------------------------- training

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        if not self.training or "object_mask" not in batch:
            return losses
        ids = batch["object_mask"].to(self.device)
        cfg = self.config.losses
        if cfg.use_codebook and self.step < self.config.codebook_start_step:
            cfg = dataclasses.replace(cfg, use_codebook=False)
        codebook = self.codebook if cfg.use_codebook else None
        terms = unified_lift_losses(outputs["features"], ids, codebook, cfg, self._generator)
        losses.update({f"{k}_loss": v for k, v in terms["losses"].items()})
        if cfg.use_codebook:
            self._track_usage(terms["aux"]["mapping"])
        if metrics_dict is not None:
            metrics_dict.update({f"ul_{k}": v for k, v in terms["metrics"].items()})
        if self.config.knn_feature_weight > 0:
            loss = knn_feature_regulariser(self.gauss_params["means"],
                                           self.gaussian_features(self.gauss_params["features_sem"]),
                                           self.config.knn_k, self.config.knn_samples, self._knn_generator)
            losses["knn_feature_loss"] = self.config.knn_feature_weight * loss
        if self.answers_text_queries and "lang_seg" in batch and self.config.losses.use_codebook:
            self._accumulate_language(outputs["features"].detach(), batch)
        return losses

    @property
    def head_config(self) -> head.InstanceHeadConfig:
        """The instance head's settings, read from the config each time (a changed config field takes effect)."""
        return self.config.instance_head()

    @property
    def instance_state(self) -> head.InstanceHeadState:
        """The instance head's state (the codebook and the running tensors registered on this model)."""
        return head.instance_state_of(self)

    def _track_usage(self, mapping: Dict[int, int]) -> None:
        head.track_usage(self.head_config, self.instance_state, mapping)

    def live_codes(self) -> Optional[torch.Tensor]:
        """[L] bool codes that compete at inference, or None (all: threshold 0 or nothing tracked yet)."""
        return head.live_codes(self.head_config, self.instance_state, self.num_train_data)

    def _accumulate_language(self, features: torch.Tensor, batch) -> None:
        """Running mean of the 2D language cue over each codebook id's pixels (names instances for queries)."""
        head.accumulate_language(self.head_config, self.instance_state, features.to(self.device), batch["lang_seg"],
                                 batch["lang_feats"])

    # ------------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def instance_scores(self, features: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-id scores ``[..., K]`` of features ``[..., D]`` and the ids ``[K]`` they stand for (None: 0..K-1).
        'codebook': logits over the competing (live) codes; 'cluster': cosine to the HDBSCAN centres."""
        if self.config.inference == "cluster":
            return centre_similarity(features, self._centres()), None
        return head.instance_scores(self.head_config, self.instance_state, features, self.num_train_data)

    @torch.no_grad()
    def instance_map(self, features: torch.Tensor, rgb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[H, W] long instance ids of a rendered feature image [H, W, D] (or [N] of features [N, D] without ``rgb``):
        the argmax of :meth:`instance_scores`; with the rendered ``rgb`` [H, W, 3] and ``refine_radius`` > 0, after
        the edge-aware filter on it (of the codebook probabilities, or of the cluster cosines)."""
        scores, ids = self.instance_scores(features)
        return head.readout(self.head_config, scores, ids, rgb, probabilities=self.config.inference != "cluster")

    def predict_instances(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["instances"] if "instances" in outputs else self.instance_map(outputs["features"])

    def _centres(self) -> torch.Tensor:
        """Cluster centres [C, D] of the baseline: HDBSCAN over rendered features sampled from the training views
        (as Contrastive Lift clusters its rendered field; single Gaussians' features are far noisier)."""
        if self._cluster_centres is None:
            cameras = getattr(self, "train_cameras", None)
            if cameras is None:
                raise RuntimeError("inference='cluster' needs the training cameras (set by UnifiedLiftPipeline)")
            gen = torch.Generator().manual_seed(0)
            views = torch.randperm(len(cameras), generator=gen)[: self.config.cluster_views].tolist()
            per_view = max(1, self.config.cluster_samples // len(views))
            samples = []
            for i in views:
                feats = UnisemSplatModel.get_outputs_for_camera(self, cameras[i : i + 1].to(self.device))["features"]
                flat = feats.reshape(-1, feats.shape[-1])
                samples.append(flat[torch.randperm(flat.shape[0], generator=gen)[:per_view].to(flat.device)].cpu())
            feats = torch.cat(samples)
            labels = cluster_gaussian_features(feats, min_cluster_size=self.config.cluster_min_size)
            centres = cluster_centres(feats, labels)
            if len(centres) == 0:  # HDBSCAN called everything noise: one segment
                centres = F.normalize(feats.mean(0, keepdim=True), dim=-1).numpy()
            self._cluster_centres = torch.as_tensor(centres, dtype=torch.float32).to(self.device)
        return self._cluster_centres

    @torch.no_grad()
    def gaussian_instance_ids(self) -> torch.Tensor:
        """[N] instance id of every Gaussian (its own feature read out like a pixel's)."""
        return self.instance_map(self.gauss_params["features_sem"].detach())

    def instance_language(self) -> torch.Tensor:
        """[L, D] unit language embedding per codebook id (zero for ids never seen with a cue)."""
        return head.instance_language(self.instance_state)

    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Text queries select whole instances: every pixel carries its instance's language embedding."""
        return self.instance_language()[self.predict_instances(outputs)]

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        outputs = UnisemSplatModel.get_outputs_for_camera(self, camera, obb_box=obb_box)
        ids = self.instance_map(outputs["features"], outputs["rgb"])
        outputs["instances"] = ids
        colours = palette(self.config.codebook_size).to(ids.device)
        outputs["instance_colors"] = colours[ids]
        if self.selected_instance is not None:
            hit = (ids == self.selected_instance)[..., None]
            tint = torch.tensor(HIGHLIGHT_COLOR, device=ids.device)
            outputs["instance_highlight"] = torch.where(hit, 0.4 * outputs["rgb"] + 0.6 * tint, 0.5 * outputs["rgb"])
        if self.answers_text_queries and (self.query_field.has_queries() or self.query_field.has_labels()):
            outputs.update(self.query_field.query_outputs(self.language_features(outputs), outputs["rgb"]))
        return outputs

    # ------------------------------------------------------------------------------------------- viewer click

    def _arm_click(self, button) -> None:
        self.viewer_control.register_pointer_cb("click", self._on_click)

    def _on_click(self, click) -> None:
        self.selected_instance = self.instance_along_ray(
            torch.tensor(click.origin, dtype=torch.float32), torch.tensor(click.direction, dtype=torch.float32)
        )
        print(f"unified-lift: selected instance {self.selected_instance}; shown in the 'instance_highlight' output")

    @torch.no_grad()
    def instance_along_ray(self, origin: torch.Tensor, direction: torch.Tensor) -> int:
        """Instance id of the surface hit by a world-space ray (Nerfstudio's scaled frame): the ray is rendered
        as the centre pixel of a tiny 3x3 pinhole camera, so it composites exactly like an image pixel."""
        forward = F.normalize(direction.float(), dim=0)
        up = torch.tensor([0.0, 0.0, 1.0]) if abs(float(forward[2])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
        right = F.normalize(torch.linalg.cross(forward, up), dim=0)
        true_up = torch.linalg.cross(right, forward)
        # OpenGL camera axes (Nerfstudio): x right, y up, z backward.
        c2w = torch.stack([right, true_up, -forward, origin.float()], dim=1)[None]
        camera = Cameras(camera_to_worlds=c2w, fx=300.0, fy=300.0, cx=1.5, cy=1.5, width=3, height=3,
                         camera_type=CameraType.PERSPECTIVE).to(self.device)
        was_training = self.training
        self.eval()
        try:
            outputs = UnisemSplatModel.get_outputs_for_camera(self, camera)
        finally:
            self.train(was_training)
        return int(self.instance_map(outputs["features"])[1, 1])

    # ------------------------------------------------------------------------------------------- evaluation

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        ids = self.predict_instances(outputs)
        colours = palette(self.config.codebook_size).to(ids.device)
        if "gt_instance" in batch:
            gt = batch["gt_instance"].to(ids.device)
            gt_colours = palette(int(gt.max()) + 1).to(ids.device)
            images["instances"] = torch.cat([gt_colours[gt], colours[ids]], dim=1)
            if self.scene_evaluator is not None:  # pooled over the views: PQ^scene
                self.scene_evaluator.update(pred_instances=ids, gt_instances=gt)
        else:
            images["instances"] = colours[ids]
        return metrics, images

    def export_ply(self, path) -> None:
        """Every Gaussian's centre, instance id and (when the scene has language cues) class to a PLY."""
        ids = self.gaussian_instance_ids().cpu()
        classes = None
        if self.answers_text_queries and self.eval_labels:
            per_instance = self.query_field.classify(self.instance_language(), self.eval_labels) + 1
            seen = self.language_weight > 0
            per_instance = torch.where(seen, per_instance, torch.full_like(per_instance, -1)).cpu()
            classes = per_instance[ids]
        head.export_instances(path, self.gauss_params["means"], ids, classes, class_names=self.class_names or None)


# ------------------------------------------------------------------------------------------------- pipeline


@dataclass
class UnifiedLiftPipelineConfig(UnisemPipelineConfig):
    _target: Type = field(default_factory=lambda: UnifiedLiftPipeline)


class UnifiedLiftPipeline(UnisemPipeline):
    """UnisemPipeline (its eval over all images adds scene-level PQ/SQ/RQ: instance ids must agree across views
    because the frames are pooled, Contrastive Lift's protocol) that also hands the model its training cameras."""

    def __init__(self, config, device, *args, **kwargs):
        super().__init__(config, device, *args, **kwargs)
        # The clustering baseline samples rendered features from the training views.
        self.model.__dict__["train_cameras"] = self.datamanager.train_dataset.cameras
