"""``ns-train unisem-panoptic``: semantic classes and object instances in one Gaussian model
(docs/methods/panoptic.md).

econSG's model and preparation (CRR labels, contextual latent init, latent autoencoder) with Unified-Lift's
instance head next to it: every Gaussian's feature parameter holds both channels, ``{"semantic": d,
"instance": 16}`` (:class:`~unisem_ns.panoptic.FeatureChannels`), rendered in one pass. The semantic channel
trains with econSG's losses, the instance channel with Unified-Lift's contrastive + codebook losses on the same
view's SAM masks; each code accumulates the classes of the pixels it wins, and each pixel gets (class,
instance) by :func:`~unisem_ns.panoptic.compose_panoptic`. ``ns-eval`` reports mIoU/mAcc, class-agnostic
PQ^scene and category-aware panoptic PQ (Panoptic Lifting's protocol).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch.nn import Parameter

from unisem_ns.capabilities import FeatureChannelsHead, PanopticHead
from unisem_ns.language.query_field import palette
from unisem_ns.metrics.scene import SceneEvaluator
from unisem_ns.ns.econsg_model import (
    EconSGDatamanager,
    EconSGDatamanagerConfig,
    EconSGDataset,
    EconSGModel,
    EconSGModelConfig,
)
from unisem_ns.panoptic import (
    DEFAULT_STUFF_CLASSES,
    FeatureChannels,
    compose_panoptic,
    export_panoptic_ply,
    match_classes,
    panoptic_colours,
    split_stuff_things,
    thing_mask,
)
from unisem_ns.unified_lift import UnifiedLiftLossConfig, knn_feature_regulariser, unified_lift_losses
from unisem_ns.unified_lift import instance_head as head

HIGHLIGHT_COLOR = (1.0, 0.15, 0.1)
SH_C0 = 0.28209479177387814

# ------------------------------------------------------------------------------------------------- data needs


class PanopticDataset(EconSGDataset):
    """econSG's training targets plus ``object_mask`` (raw per-view SAM ids) on training views; ``gt_semantic``
    and ``gt_instance`` on evaluation views."""

    load_object_masks = True


@dataclass
class PanopticDatamanagerConfig(EconSGDatamanagerConfig):
    """econSG's datamanager (its cached preparation) whose batches also carry the SAM masks."""

    _target: Type = field(default_factory=lambda: PanopticDatamanager)
    requires_object_masks: ClassVar[bool] = True


class PanopticDatamanager(EconSGDatamanager):
    @property
    def dataset_type(self) -> Type[PanopticDataset]:
        return PanopticDataset


# ------------------------------------------------------------------------------------------------- model


@dataclass
class PanopticModelConfig(EconSGModelConfig):
    """econSG's semantic latent (width d from the prepared cache) + Unified-Lift's instance feature and codebook."""

    _target: Type = field(default_factory=lambda: PanopticModel)
    instance: head.InstanceHeadConfig = field(default_factory=head.InstanceHeadConfig)
    """The instance head: channel width and codebook size, live / duplicate codes, edge-aware readout, decays of
    the code usage and of the per-code class votes (``class_decay``)."""
    losses: UnifiedLiftLossConfig = field(default_factory=UnifiedLiftLossConfig)
    """Unified-Lift's instance losses on the instance channel (weights, temperatures, ablation switches)."""
    feature_init_scale: float = 0.1
    """Initial instance features: this times RGB2SH(U[0,1)) (Unified-Lift's init; 0.1 as unified-lift here)."""
    knn_feature_weight: float = 1e-6
    """3D kNN regulariser on the instance channel (as unified-lift; 0 = off)."""
    knn_k: int = 5
    knn_samples: int = 512
    codebook_start_step: int = 0
    """Train only the contrastive branch of the instance channel before this step (0 = from the start)."""
    stuff_classes: Tuple[str, ...] = DEFAULT_STUFF_CLASSES
    """Class names that are stuff (one segment per class, instance id 0), intersected with the run's class names
    (case-insensitive); every other class is a thing and gets instances."""
    class_vote_min_alpha: float = 0.5
    """A training pixel votes for its code's class only where the render is opaque (accumulation above this)."""
    code_class_min_fraction: float = 0.5
    """A code names the class of its thing pixels only when at least this fraction of its votes is that class
    (below it the pixels keep their own semantic class; docs/methods/panoptic.md, step 8)."""


class PanopticModel(EconSGModel, FeatureChannelsHead, PanopticHead):
    config: PanopticModelConfig
    method_name = "unisem-panoptic"

    # ------------------------------------------------------------------------------------------- channels

    @property
    def feature_channels(self) -> Dict[str, int]:
        return {"semantic": self.latent_dim, "instance": self.config.instance.feature_dim}

    @property
    def channels(self) -> FeatureChannels:
        return FeatureChannels(self.feature_channels)

    @property
    def feature_dim(self) -> int:
        return self.channels.total

    def feature_channel(self, features: torch.Tensor, name: str) -> torch.Tensor:
        return self.channels.channel(features, name)

    # ------------------------------------------------------------------------------------------- building

    def populate_modules(self):
        super().populate_modules()  # econSG: Gaussians, latent init of the semantic columns, AE, language field
        cfg = self.config
        params = self.gauss_params["features_sem"]
        n = params.shape[0]
        semantic = params.data[:, : self.latent_dim]
        # Unified-Lift's init of object features, RGB2SH(U[0,1)) = (u - 0.5) / C0, scaled (feature_init_scale)
        instance = cfg.feature_init_scale * (torch.rand(n, cfg.instance.feature_dim) - 0.5) / SH_C0
        params.data = self.channels.join(semantic=semantic.float(), instance=instance)
        if not self.class_names:  # no gt/classes.json: the preparation's vocabulary is the class list
            self.class_names = ["void", *self.train_class_names]
            self.eval_labels = list(self.train_class_names)
            if self.query_field is not None:
                self.query_field.set_labels(self.eval_labels)
        # class votes are over the training vocabulary (text_latents' rows); their class ids in class_names
        index = {c: i for i, c in enumerate(self.class_names)}
        self.register_buffer("train_class_ids", torch.tensor([index.get(c, 0) for c in self.train_class_names],
                                                             dtype=torch.long), persistent=False)
        head.register_instance_state(self, head.init_instance_state(cfg.instance, language_dim=1,
                                                                    num_classes=len(self.train_class_names)))
        self.stuff_class_ids, self.thing_class_ids = split_stuff_things(self.class_names, cfg.stuff_classes)
        self.register_buffer("is_thing", thing_mask(len(self.class_names), self.thing_class_ids), persistent=False)
        self._generator = torch.Generator().manual_seed(0)
        self._knn_generator = torch.Generator().manual_seed(1)
        self.selected_instance: Optional[int] = None
        from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerControl

        self.viewer_control = ViewerControl()
        self.select_button = ViewerButton("Click to select an object", cb_hook=self._arm_click)

    def semantic_init(self, cue_features: torch.Tensor) -> Optional[torch.Tensor]:
        """econSG's latent for the semantic columns; the instance columns are drawn in populate_modules."""
        sem = super().semantic_init(cue_features)
        if sem is None:
            return None
        return self.channels.join(semantic=sem, instance=sem.new_zeros(sem.shape[0], self.config.instance.feature_dim))

    @property
    def instance_state(self) -> head.InstanceHeadState:
        return head.instance_state_of(self)

    def training_state(self) -> Dict[str, Any]:
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

    # ------------------------------------------------------------------------------------------- rendering

    def gaussian_features(self, features_sem: torch.Tensor) -> torch.Tensor:
        # econSG normalises each Gaussian's latent; Unified-Lift renders its raw instance feature
        ch = self.channels.split(features_sem)
        return self.channels.join(semantic=F.normalize(ch["semantic"], dim=-1), instance=ch["instance"])

    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.feature_channel(outputs["features"], "semantic"), dim=-1)

    # ------------------------------------------------------------------------------------------- training

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        features = outputs["features"]
        semantic = self.feature_channel(features, "semantic")
        instance = self.feature_channel(features, "instance")
        # econSG's losses (photometric, depth, L_semantic, CE) see the semantic channel only
        losses = super().get_loss_dict({**outputs, "features": semantic}, batch, metrics_dict)
        if not self.training or "object_mask" not in batch:
            return losses
        cfg = self.config.losses
        if cfg.use_codebook and self.step < self.config.codebook_start_step:
            cfg = dataclasses.replace(cfg, use_codebook=False)
        codebook = self.codebook if cfg.use_codebook else None
        terms = unified_lift_losses(instance, batch["object_mask"].to(self.device), codebook, cfg, self._generator)
        losses.update({f"instance_{k}_loss": v for k, v in terms["losses"].items()})
        if metrics_dict is not None:
            metrics_dict.update({f"ul_{k}": v for k, v in terms["metrics"].items()})
        if self.config.knn_feature_weight > 0:
            feats = self.feature_channel(self.gaussian_features(self.gauss_params["features_sem"]), "instance")
            loss = knn_feature_regulariser(self.gauss_params["means"], feats, self.config.knn_k,
                                           self.config.knn_samples, self._knn_generator)
            losses["instance_knn_feature_loss"] = self.config.knn_feature_weight * loss
        if cfg.use_codebook:
            head.track_usage(self.config.instance, self.instance_state, terms["aux"]["mapping"])
            self._vote_classes(semantic.detach(), instance.detach(), outputs["accumulation"].detach())
        return losses

    @torch.no_grad()
    def _vote_classes(self, semantic: torch.Tensor, instance: torch.Tensor, alpha: torch.Tensor) -> None:
        """Each opaque pixel votes for (the code it wins, the semantic channel's class there) (step 6)."""
        codes = self.codebook.instance_ids(instance)
        classes = (F.normalize(semantic, dim=-1) @ self.text_latents.T).argmax(-1)
        classes = torch.where(alpha[..., 0] > self.config.class_vote_min_alpha, classes, torch.full_like(classes, -1))
        head.accumulate_classes(self.config.instance, self.instance_state, codes, classes)

    # ------------------------------------------------------------------------------------------- inference

    def live_codes(self) -> Optional[torch.Tensor]:
        return head.live_codes(self.config.instance, self.instance_state, self.num_train_data)

    @torch.no_grad()
    def instance_map(self, features: torch.Tensor, rgb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Code id per pixel [H, W] of a rendered feature image [H, W, d + e] (or per row [N] of features
        [N, d + e] without ``rgb``): the instance head's live-code argmax, edge-aware with ``rgb``."""
        inst = self.feature_channel(features, "instance")
        return head.instance_map(self.config.instance, self.instance_state, inst, self.num_train_data, rgb)

    def code_class_ids(self) -> torch.Tensor:
        """[L] class id (in ``class_names``) of each code's majority vote; 0 where it has no votes or the majority
        is below ``code_class_min_fraction``."""
        best = head.code_classes(self.instance_state)
        confident = head.code_class_distribution(self.instance_state).max(dim=1).values >= self.config.code_class_min_fraction
        return torch.where((best >= 0) & confident, self.train_class_ids[best.clamp_min(0)], torch.zeros_like(best))

    def compose(self, pixel_classes: torch.Tensor, codes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return compose_panoptic(pixel_classes, codes, self.code_class_ids(), self.is_thing)

    def predict_instances(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Code ids (class-agnostic instances, as Unified-Lift's)."""
        return outputs["instances"] if "instances" in outputs else self.instance_map(outputs["features"])

    def predict_panoptic(self, outputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if "panoptic_classes" in outputs:
            return outputs["panoptic_classes"], outputs["panoptic_instances"]
        return self.compose(self.predict_classes(outputs), self.predict_instances(outputs))

    @torch.no_grad()
    def gaussian_instance_ids(self) -> torch.Tensor:
        """[N] code id of every Gaussian (its instance channel read out like a pixel's)."""
        return self.instance_map(self.gaussian_features(self.gauss_params["features_sem"].detach()))

    @torch.no_grad()
    def gaussian_panoptic(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per Gaussian: (class id, panoptic instance id (0 = stuff), unit semantic latent [N, d])."""
        feats = self.gaussian_features(self.gauss_params["features_sem"].detach())
        latent = self.feature_channel(feats, "semantic")
        pixel_classes = self.query_field.classify(latent, self.eval_labels) + 1
        classes, instances = self.compose(pixel_classes, self.instance_map(feats))
        return classes, instances, latent

    def export_ply(self, path) -> None:
        """Every Gaussian's centre, class, panoptic instance id (0 = stuff) and semantic latent to a PLY
        (``latent_0 ..``; :func:`unisem_ns.panoptic.export_panoptic_ply`)."""
        classes, instances, latent = self.gaussian_panoptic()
        export_panoptic_ply(path, self.gauss_params["means"].detach().cpu(), instances.cpu(), classes.cpu(),
                            latent.cpu(), class_names=self.class_names)

    def query_classes(self) -> torch.Tensor:
        """[Q] class id each current text query names (closest class name in the text encoder's space)."""
        field = self.query_field
        return match_classes(field.encoder.encode(field.queries), field.encoder.encode(self.eval_labels),
                             [self.class_names.index(c) for c in self.eval_labels])

    @torch.no_grad()
    def get_outputs_for_camera(self, camera, obb_box=None) -> Dict[str, torch.Tensor]:
        outputs = super().get_outputs_for_camera(camera, obb_box=obb_box)  # + relevancy / segmentation outputs
        codes = self.instance_map(outputs["features"], outputs["rgb"])
        outputs["instances"] = codes
        outputs["instance_colors"] = palette(self.config.instance.codebook_size).to(codes.device)[codes]
        classes, instances = self.compose(self.predict_classes(outputs), codes)
        outputs["panoptic_classes"], outputs["panoptic_instances"] = classes, instances
        outputs["panoptic"] = panoptic_colours(classes, instances, len(self.class_names),
                                               self.config.instance.codebook_size)
        if self.selected_instance is not None:
            hit = (codes == self.selected_instance)[..., None]
            tint = torch.tensor(HIGHLIGHT_COLOR, device=codes.device)
            outputs["instance_highlight"] = torch.where(hit, 0.4 * outputs["rgb"] + 0.6 * tint, 0.5 * outputs["rgb"])
        if self.query_field is not None and self.query_field.has_queries() and self.eval_labels:
            # a text query selects the segments of the class it names: every instance of a thing class
            for i, c in enumerate(self.query_classes().tolist()):
                hit = classes == int(c)
                outputs[f"query_class_mask_{i}"] = hit[..., None].float()
                outputs[f"query_instances_{i}"] = torch.where(hit[..., None], outputs["panoptic"], 0.3 * outputs["rgb"])
        return outputs

    # ------------------------------------------------------------------------------------------- viewer click

    def _arm_click(self, button) -> None:
        self.viewer_control.register_pointer_cb("click", self._on_click)

    def _on_click(self, click) -> None:
        code = self.instance_along_ray(torch.tensor(click.origin, dtype=torch.float32),
                                       torch.tensor(click.direction, dtype=torch.float32))
        self.selected_instance = code
        print(f"unisem-panoptic: {self.describe_instance(code)}; shown in the 'instance_highlight' output")

    def describe_instance(self, code: int) -> str:
        """'selected instance <code> (class <name>)' for a code id."""
        c = int(self.code_class_ids()[code])
        name = self.class_names[c] if c > 0 else "unknown"
        kind = "thing" if c > 0 and bool(self.is_thing[c]) else ("stuff" if c > 0 else "no votes")
        return f"selected instance {code} (class '{name}', {kind})"

    @torch.no_grad()
    def instance_along_ray(self, origin: torch.Tensor, direction: torch.Tensor) -> int:
        """Code id of the surface hit by a world-space ray (Unified-Lift's click: a 3x3 camera around the ray)."""
        from unisem_ns.ns.unified_lift_model import UnifiedLiftModel

        return UnifiedLiftModel.instance_along_ray(self, origin, direction)

    # ------------------------------------------------------------------------------------------- evaluation

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)  # PSNR, depth, mIoU / mAcc
        codes = self.predict_instances(outputs)
        classes, instances = self.predict_panoptic(outputs)
        pan = outputs.get("panoptic")
        if pan is None:
            pan = panoptic_colours(classes, instances, len(self.class_names), self.config.instance.codebook_size)
        if "gt_instance" in batch and "gt_semantic" in batch:
            gt_inst = batch["gt_instance"].to(codes.device)
            gt_sem = batch["gt_semantic"].to(codes.device)
            gt_inst_pan = torch.where(self.is_thing.to(gt_sem.device)[gt_sem.clamp(0, len(self.class_names) - 1)],
                                      gt_inst, torch.zeros_like(gt_inst))
            gt_pan = panoptic_colours(gt_sem, gt_inst_pan, len(self.class_names), int(gt_inst.max()) + 1)
            images["panoptic"] = torch.cat([gt_pan, pan], dim=1)
            if self.scene_evaluator is not None:  # the semantic maps were added by super()
                self.scene_evaluator.update(gt_classes=gt_sem, pred_instances=codes, gt_instances=gt_inst,
                                            panoptic_classes=classes, panoptic_instances=instances)
        else:
            images["panoptic"] = pan
        return metrics, images

    def make_scene_evaluator(self) -> SceneEvaluator:
        """Pooled mIoU/mAcc, class-agnostic PQ^scene on the code ids (Unified-Lift's) and category-aware PQ with
        Panoptic Lifting's protocol on the composed maps (thing classes = the non-stuff classes)."""
        return SceneEvaluator(num_classes=len(self.class_names) if self.eval_labels else None, ignore_index=0,
                              things=self.thing_class_ids)
