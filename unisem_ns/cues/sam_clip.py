"""The real 2D cue front end: SAM automatic masks at LangSplat's levels + one CLIP embedding per mask.

What it does per image (LangSplat's preprocess.py, re-implemented on the stock ``segment_anything``):

1. Images taller than ``max_height`` (1080) are downscaled to that height for SAM and CLIP (LangSplat);
   the written maps are resized back to the image's resolution (nearest neighbour).
2. :class:`LevelledMaskGenerator` = ``SamAutomaticMaskGenerator`` with LangSplat's settings
   (points_per_side 32, pred_iou_thresh 0.7, box_nms_thresh 0.7, stability_score_thresh 0.85,
   crop_n_layers 1, crop_n_points_downscale_factor 1, min_mask_region_area 100) that keeps SAM's three
   multimask outputs apart, exactly like LangSplat's modified generator: level ``s`` / ``m`` / ``l`` = the
   masks from multimask output 0 / 1 / 2 (subpart / part / whole), each filtered (pred IoU, stability,
   crop edge), box-NMSed within its crop and across crops, and small-region-cleaned on its own; level
   ``default`` = all three outputs pooled and NMSed together (= the stock generator's output).
   The SAM forward passes are shared; only the filtering is done four times.
3. :func:`mask_nms` per level, LangSplat's rule (iou 0.8, score 0.7, inner 0.5, score = stability x
   predicted IoU): drop a mask whose IoU with a higher-scored one exceeds 0.8, whose score is <= 0.7
   (unless no mask passes: then the best 3 are kept), or that lies >= 85 % inside another mask covering
   < 50 % of that other one. (LangSplat's ``tril(diagonal=1)`` also compares with the next-ranked mask
   above the diagonal; we use the strict lower triangle, the intended rule.)
4. Per-level segmentation map: masks painted large -> small, so every pixel gets the smallest mask
   covering it (LangSplat paints in score order); only masks that remain visible get a row; rows are
   offset across levels (LangSplat layout, L = 4: default, s, m, l).
5. Per-mask CLIP embedding (LangSplat crop): the image with pixels outside the mask set to 0, cropped to
   the mask's bounding box, zero-padded (centred) to a square, resized to 224 x 224 (bilinear), encoded
   with the encoder's ``encode_images`` (OpenCLIP image tower), L2-normalised.
6. ``object_mask/<stem>.png``: the ``default`` level's visible masks, ids 1..K in paint order (large ->
   small; 0 = unassigned). Ids do not agree across views (raw SAM, Unified-Lift's input).

Dense mode (:func:`run_maskclip`, ``unisem-preprocess --mode sam-clip --dense``): MaskCLIP-style dense
features of the same OpenCLIP image tower, written to ``dense_features/<stem>.npy`` (float16
[h / p, w / p, D] for patch size p: [h/16, w/16, 512] for ViT-B/16) by :func:`maskclip_patch_features`:
the image (downscaled to ``max_height`` like above) is resized to a whole number of patches and
normalised with CLIP's mean / std; the class-token and patch embeddings (positional embedding resampled
bicubically when the patch grid is not the model's) go through every transformer block but the last; of
the last block only the value path is kept: ``ln_1`` -> value projection -> attention output projection
(``out_proj``, then LayerScale if any), i.e. attention replaced by the identity, its residual and MLP
dropped; every patch token then goes through the tower's ``ln_post`` and ``proj`` into the joint text
space and is L2-normalised. Nothing is downloaded: without the CLIP weights this is the encoder's
one-line "download ... and pass --clip-checkpoint" error.

Nothing is downloaded: a missing SAM checkpoint is a one-line error saying what to fetch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from unisem_ns.cues.layout import (
    LANGSPLAT_LEVELS,
    CueCache,
    CueError,
    CueRunReport,
    DenseCueCache,
    save_language_cue,
    save_object_mask,
    scene_stems,
    track,
    write_dense_features,
)
from unisem_ns.data.scene_io import read_transforms

__all__ = [
    "SAM_CHECKPOINTS",
    "SAM_RELEASE_URL",
    "LANGSPLAT_SAM_SETTINGS",
    "SamClipConfig",
    "check_sam_checkpoint",
    "load_sam",
    "build_tiny_sam",
    "LevelledMaskGenerator",
    "make_mask_generator",
    "mask_nms",
    "clip_crop",
    "encode_masks",
    "sam_clip_view",
    "run_sam_clip",
    "MASKCLIP_VERSION",
    "maskclip_patch_features",
    "maskclip_view",
    "maskclip_settings",
    "run_maskclip",
]

MASKCLIP_VERSION = 1
"""Bump when :func:`maskclip_patch_features` changes its output (part of the dense cache key)."""

SAM_CHECKPOINTS = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
SAM_RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
LANGSPLAT_SAM_SETTINGS: Dict[str, Any] = dict(
    points_per_side=32,
    pred_iou_thresh=0.7,
    box_nms_thresh=0.7,
    stability_score_thresh=0.85,
    crop_n_layers=1,
    crop_n_points_downscale_factor=1,
    min_mask_region_area=100,
)

MaskRecords = List[Dict[str, Any]]
MaskGenerator = Callable[[np.ndarray], Union[Dict[str, MaskRecords], MaskRecords]]


@dataclass
class SamClipConfig:
    """Settings of the SAM + CLIP front end (defaults = LangSplat's)."""

    sam_checkpoint: Optional[Path] = None
    """SAM weights (``sam_vit_h_4b8939.pth`` for vit_h), from the segment-anything release."""
    sam_model: str = "vit_h"
    """SAM variant: vit_h | vit_l | vit_b (must match the checkpoint)."""
    generator: Dict[str, Any] = field(default_factory=lambda: dict(LANGSPLAT_SAM_SETTINGS))
    """Keyword arguments of SamAutomaticMaskGenerator."""
    nms_iou: float = 0.8
    nms_score: float = 0.7
    nms_inner: float = 0.5
    crop_size: int = 224
    """CLIP input size of each mask crop."""
    max_height: int = 1080
    """Images taller than this are downscaled for SAM / CLIP (maps are written at full resolution)."""
    clip_batch: int = 32
    device: str = "auto"
    """Device for SAM: auto (cuda if available) | cpu | cuda[:i]."""

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def key_settings(self) -> Dict[str, Any]:
        """What the cues depend on (goes into the manifest key; not the device)."""
        ckpt = self.sam_checkpoint
        return {
            "sam_model": self.sam_model,
            "sam_checkpoint": None if ckpt is None else Path(ckpt).name,
            "sam_checkpoint_bytes": (Path(ckpt).stat().st_size if ckpt is not None and Path(ckpt).exists() else None),
            "generator": dict(sorted(self.generator.items())),
            "nms": {"iou": self.nms_iou, "score": self.nms_score, "inner": self.nms_inner},
            "crop_size": self.crop_size,
            "max_height": self.max_height,
        }


# --------------------------------------------------------------------------------------------
# SAM construction
# --------------------------------------------------------------------------------------------


def _missing_checkpoint(path: Optional[Path], model_type: str) -> CueError:
    name = SAM_CHECKPOINTS.get(model_type, SAM_CHECKPOINTS["vit_h"])
    where = f"{path}: SAM checkpoint not found" if path is not None else "no SAM checkpoint given"
    return CueError(
        f"{where}; download {name} (SAM {model_type}) from the segment-anything release "
        f"({SAM_RELEASE_URL}{name}) and pass it with --sam-checkpoint PATH (--sam-model {model_type})"
    )


def check_sam_checkpoint(checkpoint: Optional[Path], model_type: str = "vit_h") -> Path:
    """Raise the one-line "download ..." :class:`CueError` unless ``checkpoint`` is an existing file."""
    if model_type not in SAM_CHECKPOINTS:
        raise CueError(f"--sam-model {model_type!r}: unknown SAM variant; choose one of {', '.join(SAM_CHECKPOINTS)}")
    if checkpoint is None or not Path(checkpoint).is_file():
        raise _missing_checkpoint(None if checkpoint is None else Path(checkpoint), model_type)
    return Path(checkpoint)


def load_sam(checkpoint: Optional[Path], model_type: str = "vit_h", device: str = "cpu"):
    """``sam_model_registry[model_type](checkpoint=...)`` on ``device``; one-line error if the file is missing."""
    check_sam_checkpoint(checkpoint, model_type)
    from segment_anything import sam_model_registry

    try:
        sam = sam_model_registry[model_type](checkpoint=str(checkpoint))
    except (RuntimeError, KeyError, OSError, EOFError) as e:
        raise CueError(
            f"{checkpoint}: could not load it as SAM {model_type} ({type(e).__name__}); check --sam-model matches the "
            f"checkpoint ({', '.join(f'{k}: {v}' for k, v in SAM_CHECKPOINTS.items())}) and that the download is complete"
        ) from None
    return sam.to(device).eval()


def build_tiny_sam(img_size: int = 64, dim: int = 32, seed: int = 0):
    """A RANDOM-INIT, tiny SAM (1-block ViT, small decoder) for tests and smoke runs. Masks are meaningless."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2, mlp_ratio=2.0,
                out_chans=dim, qkv_bias=True, use_rel_pos=False, window_size=0, global_attn_indexes=(),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(img_size // 16, img_size // 16),
                input_image_size=(img_size, img_size), mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=2 * dim, num_heads=2),
                transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=dim,
            ),
        )
    return sam.eval()


# --------------------------------------------------------------------------------------------
# Levelled automatic mask generator
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _generator_class():
    import torch
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import (
        MaskData,
        area_from_rle,
        batch_iterator,
        batched_mask_to_box,
        box_xyxy_to_xywh,
        calculate_stability_score,
        generate_crop_boxes,
        is_box_near_crop_edge,
        mask_to_rle_pytorch,
        rle_to_mask,
        uncrop_boxes_xyxy,
        uncrop_masks,
        uncrop_points,
    )
    from torchvision.ops.boxes import batched_nms, box_area

    def _subset(data: "MaskData", keep) -> "MaskData":
        out = MaskData(**{k: v for k, v in data.items()})
        out.filter(keep)
        return out

    class LevelledMaskGenerator(SamAutomaticMaskGenerator):
        """SamAutomaticMaskGenerator that also returns LangSplat's s / m / l levels (see module docs)."""

        @torch.no_grad()
        def generate_levels(self, image: np.ndarray) -> Dict[str, MaskRecords]:
            """``{"default", "s", "m", "l"}`` -> SAM mask records (``segmentation`` bool HxW, ``area``, ``bbox``
            XYWH, ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``)."""
            orig_size = image.shape[:2]
            crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
            data = MaskData()
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
                data.cat(self._process_crop_levels(image, crop_box, layer_idx, orig_size))
            out: Dict[str, MaskRecords] = {}
            for g, name in enumerate(LANGSPLAT_LEVELS):
                d = _subset(data, data["group"] == g) if "group" in data._stats else MaskData()
                if len(crop_boxes) > 1 and "boxes" in d._stats and len(d["boxes"]):
                    scores = 1 / box_area(d["crop_boxes"])
                    keep = batched_nms(d["boxes"].float(), scores.to(d["boxes"].device),
                                       torch.zeros_like(d["boxes"][:, 0]), iou_threshold=self.crop_nms_thresh)
                    d.filter(keep)
                out[name] = self._records(d)
            return out

        def generate(self, image: np.ndarray) -> MaskRecords:  # the stock output = level "default"
            return self.generate_levels(image)["default"]

        def _records(self, d: "MaskData") -> MaskRecords:
            if "rles" not in d._stats or len(d["rles"]) == 0:
                return []
            d.to_numpy()
            if self.min_mask_region_area > 0:
                d = self.postprocess_small_regions(d, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
            recs = []
            for i in range(len(d["rles"])):
                recs.append({
                    "segmentation": rle_to_mask(d["rles"][i]),
                    "area": area_from_rle(d["rles"][i]),
                    "bbox": box_xyxy_to_xywh(d["boxes"][i]).tolist(),
                    "predicted_iou": float(d["iou_preds"][i]),
                    "point_coords": [d["points"][i].tolist()],
                    "stability_score": float(d["stability_score"][i]),
                    "crop_box": box_xyxy_to_xywh(d["crop_boxes"][i]).tolist(),
                    "level": int(d["level"][i]),
                })
            return recs

        def _process_crop_levels(self, image, crop_box, crop_layer_idx, orig_size) -> "MaskData":
            x0, y0, x1, y1 = crop_box
            cropped = image[y0:y1, x0:x1, :]
            size = cropped.shape[:2]
            self.predictor.set_image(cropped)
            points_for_image = self.point_grids[crop_layer_idx] * np.array(size)[None, ::-1]
            data = MaskData()
            for (points,) in batch_iterator(self.points_per_batch, points_for_image):
                data.cat(self._process_batch_levels(points, size, crop_box, orig_size))
            self.predictor.reset_image()
            out = MaskData()
            if "boxes" not in data._stats or len(data["boxes"]) == 0:
                return out
            # group 0 (default): NMS over all three outputs; groups 1..3 (s, m, l): NMS within one output.
            for group, cats, sel in (
                [(0, torch.zeros(len(data["boxes"])), None)]
                + [(g + 1, torch.zeros(int((data["level"] == g).sum())), data["level"] == g) for g in range(3)]
            ):
                d = data if sel is None else _subset(data, sel)
                if len(cats) == 0:
                    continue
                keep = batched_nms(d["boxes"].float(), d["iou_preds"], cats, iou_threshold=self.box_nms_thresh)
                d = _subset(d, keep)
                d["group"] = torch.full((len(keep),), group, dtype=torch.long)
                out.cat(d)
            out["boxes"] = uncrop_boxes_xyxy(out["boxes"], crop_box)
            out["points"] = uncrop_points(out["points"], crop_box)
            out["crop_boxes"] = torch.tensor([crop_box for _ in range(len(out["rles"]))])
            return out

        def _process_batch_levels(self, points, im_size, crop_box, orig_size) -> "MaskData":
            orig_h, orig_w = orig_size
            pts = self.predictor.transform.apply_coords(points, im_size)
            in_points = torch.as_tensor(pts, device=self.predictor.device)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            masks, iou_preds, _ = self.predictor.predict_torch(
                in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True
            )
            n, m = masks.shape[:2]
            data = MaskData(
                masks=masks.flatten(0, 1),
                iou_preds=iou_preds.flatten(0, 1),
                points=torch.as_tensor(points.repeat(m, axis=0)),
                level=torch.arange(m).repeat(n),  # flatten order is point-major: output index = i % m
            )
            del masks
            if self.pred_iou_thresh > 0.0:
                data.filter(data["iou_preds"] > self.pred_iou_thresh)
            data["stability_score"] = calculate_stability_score(
                data["masks"], self.predictor.model.mask_threshold, self.stability_score_offset
            )
            if self.stability_score_thresh > 0.0:
                data.filter(data["stability_score"] >= self.stability_score_thresh)
            data["masks"] = data["masks"] > self.predictor.model.mask_threshold
            data["boxes"] = batched_mask_to_box(data["masks"])
            keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
            if not torch.all(keep):
                data.filter(keep)
            data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
            data["rles"] = mask_to_rle_pytorch(data["masks"])
            del data["masks"]
            data["level"] = data["level"].cpu()
            return data

    return LevelledMaskGenerator


def __getattr__(name: str):  # lazy: importing this module must not import segment_anything / torchvision
    if name == "LevelledMaskGenerator":
        return _generator_class()
    raise AttributeError(name)


def make_mask_generator(sam, **settings) -> Callable[[np.ndarray], Dict[str, MaskRecords]]:
    """A :class:`LevelledMaskGenerator` on ``sam`` with LangSplat's settings (overridden by ``settings``);
    returns its ``generate_levels``."""
    kw = dict(LANGSPLAT_SAM_SETTINGS)
    kw.update(settings)
    return _generator_class()(sam, output_mode="binary_mask", **kw).generate_levels


# --------------------------------------------------------------------------------------------
# LangSplat mask NMS, crops, CLIP embeddings, maps
# --------------------------------------------------------------------------------------------


def mask_nms(masks, scores, iou_thr: float = 0.8, score_thr: float = 0.7, inner_thr: float = 0.5) -> np.ndarray:
    """LangSplat's mask NMS (see module docs). ``masks`` [N, H, W] bool, ``scores`` [N];
    returns kept indices into ``masks``, best score first."""
    import torch

    masks = torch.as_tensor(np.asarray(masks)).reshape(len(scores), -1)
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    scores, idx = scores.sort(descending=True)
    m = masks[idx].float()
    area = m.sum(1)
    inter = m @ m.T
    union = area[:, None] + area[None, :] - inter
    iou = inter / union.clamp(min=1e-8)
    ri = inter / area[:, None].clamp(min=1e-8)  # fraction of i covered by j
    rj = inter / area[None, :].clamp(min=1e-8)  # fraction of j covered by i
    inner_vals = 1 - ri * rj
    inner = torch.zeros_like(iou)
    c1 = (ri < 0.5) & (rj >= 0.85)  # j (lower score) mostly inside a much larger i -> stored at [i, j]
    inner[c1] = inner_vals[c1]
    c2 = ((ri >= 0.85) & (rj < 0.5)).T  # i mostly inside a much larger j -> stored at [j, i]
    inner[c2] = inner_vals.T[c2]
    iou_max = torch.triu(iou, diagonal=1).max(0).values
    inner_u = torch.triu(inner, diagonal=1).max(0).values
    inner_l = torch.tril(inner, diagonal=-1).max(0).values
    keep = iou_max <= iou_thr
    keep_conf = scores > score_thr
    if not keep_conf.any():
        keep_conf[: min(3, n)] = True
    keep_u = inner_u <= 1 - inner_thr
    keep_l = inner_l <= 1 - inner_thr
    keep = keep & keep_conf & keep_u & keep_l
    return idx[keep].numpy()


def clip_crop(image: np.ndarray, mask: np.ndarray, size: int = 224) -> Optional[np.ndarray]:
    """LangSplat's mask crop: masked image (outside = 0), bbox crop, centred zero-pad to square, resize.
    Returns float32 [3, size, size] in [0, 1] (None for an empty mask)."""
    import cv2

    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = image[y0:y1, x0:x1].copy()
    crop[~mask[y0:y1, x0:x1]] = 0
    h, w = crop.shape[:2]
    side = max(h, w)
    pad = np.zeros((side, side, 3), np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    pad[oy:oy + h, ox:ox + w] = crop
    out = cv2.resize(pad, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32) / 255.0


def encode_masks(encoder, image: np.ndarray, masks: Sequence[np.ndarray], size: int = 224, batch: int = 32) -> np.ndarray:
    """One unit CLIP embedding per mask through ``encoder.encode_images`` -> float32 [n, D]."""
    import torch

    dim = int(encoder.dim)
    if len(masks) == 0:
        return np.zeros((0, dim), np.float32)
    crops = [clip_crop(image, m, size) for m in masks]
    out = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(np.stack(crops[i:i + batch]))
        with torch.no_grad():
            e = encoder.encode_images(x)
        out.append(np.asarray(e.detach().float().cpu() if isinstance(e, torch.Tensor) else e, dtype=np.float32))
    f = np.concatenate(out)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _paint_large_to_small(masks: Sequence[np.ndarray], shape) -> Tuple[np.ndarray, List[int]]:
    lab = np.full(shape, -1, np.int64)
    order = sorted(range(len(masks)), key=lambda i: (-int(masks[i].sum()), i))
    for i in order:
        lab[masks[i]] = i
    counts = np.bincount(lab[lab >= 0], minlength=len(masks)) if len(masks) else np.zeros(0, np.int64)
    visible = [i for i in order if counts[i] > 0]
    remap = np.full(len(masks) + 1, -1, np.int64)
    for new, old in enumerate(visible):
        remap[old] = new
    return remap[lab], visible


def _as_levels(out: Union[Dict[str, MaskRecords], MaskRecords]) -> Tuple[Tuple[str, ...], List[MaskRecords]]:
    if isinstance(out, dict):
        unknown = set(out) - set(LANGSPLAT_LEVELS)
        if unknown:
            raise ValueError(f"mask generator returned unknown levels {sorted(unknown)}; use {LANGSPLAT_LEVELS}")
        return LANGSPLAT_LEVELS, [list(out.get(k, [])) for k in LANGSPLAT_LEVELS]
    return ("default",), [list(out)]


def sam_clip_view(
    image: np.ndarray,
    mask_generator: MaskGenerator,
    encoder,
    config: SamClipConfig = SamClipConfig(),
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cues of one RGB uint8 [H, W, 3] image -> ``(seg [L, H, W], feats [K, D] float32, object_ids [H, W])``.

    ``mask_generator(image)`` returns SAM records, either ``{"default", "s", "m", "l"} -> records`` (L = 4)
    or one list (L = 1).
    """
    import cv2

    H, W = image.shape[:2]
    work = image
    if config.max_height and H > config.max_height:
        scale = config.max_height / H
        work = cv2.resize(image, (max(1, round(W * scale)), config.max_height), interpolation=cv2.INTER_AREA)
    h, w = work.shape[:2]
    names, levels = _as_levels(mask_generator(work))
    seg_levels, feat_blocks, offset = [], [], 0
    default_lab = None
    for name, recs in zip(names, levels):
        recs = [r for r in recs if np.asarray(r["segmentation"]).any()]
        if recs:
            segs = np.stack([np.asarray(r["segmentation"], bool) for r in recs])
            scores = np.array([float(r["stability_score"]) * float(r["predicted_iou"]) for r in recs], np.float32)
            keep = mask_nms(segs, scores, config.nms_iou, config.nms_score, config.nms_inner)
            masks = [segs[i] for i in keep]
        else:
            masks = []
        lab, visible = _paint_large_to_small(masks, (h, w))
        feats = encode_masks(encoder, work, [masks[i] for i in visible], config.crop_size, config.clip_batch)
        if name == "default":
            default_lab = lab
        seg_levels.append(np.where(lab >= 0, lab + offset, -1))
        feat_blocks.append(feats)
        offset += len(visible)
    seg = np.stack(seg_levels)
    if (h, w) != (H, W):
        seg = np.stack([cv2.resize(s.astype(np.int32), (W, H), interpolation=cv2.INTER_NEAREST) for s in seg])
        default_lab = cv2.resize(default_lab.astype(np.int32), (W, H), interpolation=cv2.INTER_NEAREST)
    obj = np.where(default_lab >= 0, default_lab + 1, 0)
    feats = np.concatenate(feat_blocks).astype(np.float32) if feat_blocks else np.zeros((0, int(encoder.dim)), np.float32)
    return seg.astype(np.int64), feats, obj


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise CueError(f"{path}: unreadable image ({type(e).__name__}); replace it or drop its frame") from None


def sam_clip_settings(encoder, config: SamClipConfig, generator_name: str = "segment_anything") -> Dict[str, Any]:
    return {"mode": "sam-clip", "generator": generator_name, "sam": config.key_settings(), "encoder": dict(encoder.to_json())}


def run_sam_clip(
    scene: Path,
    encoder,
    config: SamClipConfig = SamClipConfig(),
    mask_generator: Optional[MaskGenerator] = None,
    generator_name: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CueRunReport:
    """SAM + CLIP cues for every image of ``scene`` (resumable, atomic; see module docs).

    Args:
        encoder: a CLIP :class:`~unisem_ns.language.encoders.TextEncoder` with ``encode_images``; the
            features are in its text space (its ``to_json()`` goes to encoder.json).
        config: SAM checkpoint / model / generator and NMS settings.
        mask_generator: inject a generator (SAM's record format) instead of loading SAM from
            ``config.sam_checkpoint``; ``generator_name`` then names it in the manifest key.
    """
    scene = Path(scene)
    if not hasattr(encoder, "encode_images"):
        raise CueError(
            f"text encoder {getattr(encoder, 'name', encoder)!r} has no image tower; --mode sam-clip needs a CLIP "
            "encoder, e.g. --clip open_clip:ViT-B-16:laion2b_s34b_b88k"
        )
    stems = scene_stems(scene)
    meta = read_transforms(scene)
    images = {Path(f["file_path"]).stem: scene / f["file_path"] for f in meta["frames"]}
    settings = sam_clip_settings(encoder, config, generator_name or ("injected" if mask_generator else "segment_anything"))
    if mask_generator is None:
        check_sam_checkpoint(config.sam_checkpoint, config.sam_model)  # fail before touching any file
    with CueCache(scene, stems, settings, encoder.to_json(), log=log) as cache:
        todo = cache.begin()
        if todo and mask_generator is None:  # load SAM only when there is something to do
            sam = load_sam(config.sam_checkpoint, config.sam_model, config.resolved_device())
            mask_generator = make_mask_generator(sam, **config.generator)
        for stem in track(todo, f"SAM + CLIP cues ({len(todo)} views)", enabled=progress):
            seg, feats, obj = sam_clip_view(_load_rgb(images[stem]), mask_generator, encoder, config)
            save_object_mask(scene, stem, obj)
            save_language_cue(scene, stem, seg, feats)
            cache.mark_done(stem)
        return cache.finish()


# --------------------------------------------------------------------------------------------
# Dense MaskCLIP patch features
# --------------------------------------------------------------------------------------------


def _vision_tower(encoder):
    """The open_clip VisionTransformer of ``encoder`` (CueError when it has none MaskCLIP can use)."""
    model = getattr(encoder, "model", None) if hasattr(encoder, "encode_images") else None
    visual = getattr(model, "visual", None)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    if visual is None or not all(hasattr(visual, a) for a in needed):
        raise CueError(
            f"text encoder {getattr(encoder, 'name', encoder)!r} has no OpenCLIP ViT image tower; dense (MaskCLIP) "
            "features need one, e.g. --clip open_clip:ViT-B-16:laion2b_s34b_b88k"
        )
    if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
        raise CueError(f"text encoder {getattr(encoder, 'name', encoder)!r}: its ViT pools with attention or has "
                       "no output projection; dense (MaskCLIP) features need a plain CLIP ViT such as ViT-B-16")
    return visual


def maskclip_patch_features(visual, images):
    """MaskCLIP dense features of an open_clip ``VisionTransformer`` (recipe: module docstring).

    Args:
        visual: the image tower (``open_clip.transformer.VisionTransformer``: ``conv1``, ``class_embedding``,
            ``positional_embedding``, ``ln_pre``, ``transformer.resblocks`` of ``ResidualAttentionBlock``,
            ``ln_post``, ``proj``).
        images: [n, 3, H, W] CLIP-normalised images, H and W multiples of the patch size.

    Returns:
        float32 [n, H / p, W / p, D] unit features (D = the tower's output dim, the joint text space).
    """
    import torch
    import torch.nn.functional as F

    ph, pw = (visual.conv1.kernel_size if isinstance(visual.conv1.kernel_size, tuple)
              else (visual.conv1.kernel_size,) * 2)
    n, _, H, W = images.shape
    if H % ph or W % pw:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
    gh, gw = H // ph, W // pw
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))  # [n, width, gh, gw]
    x = x.flatten(2).transpose(1, 2)  # [n, gh * gw, width]
    pos = visual.positional_embedding.to(dtype)
    grid = getattr(visual, "grid_size", None)
    g0 = tuple(grid) if grid is not None else (int(round((pos.shape[0] - 1) ** 0.5)),) * 2
    grid_pos = pos[1:]
    if (gh, gw) != g0:
        grid_pos = F.interpolate(grid_pos.reshape(1, g0[0], g0[1], -1).permute(0, 3, 1, 2).float(), size=(gh, gw),
                                 mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(gh * gw, -1).to(dtype)
    cls = visual.class_embedding.to(dtype).view(1, 1, -1).expand(n, 1, -1)
    x = torch.cat([cls, x], dim=1) + torch.cat([pos[:1], grid_pos])[None]
    x = visual.ln_pre(x)  # (patch dropout is the identity in eval mode)
    blocks = list(visual.transformer.resblocks)
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    if not batch_first:
        x = x.transpose(0, 1)
    last = blocks[-1]
    attn = last.attn
    if not isinstance(attn, torch.nn.MultiheadAttention):
        raise CueError(f"{type(last).__name__}: MaskCLIP features need open_clip's standard ResidualAttentionBlock "
                       "(nn.MultiheadAttention); use a plain CLIP ViT such as ViT-B-16")
    e = attn.embed_dim
    w_v = attn.in_proj_weight[2 * e:] if attn._qkv_same_embed_dim else attn.v_proj_weight
    b_v = attn.in_proj_bias[2 * e:] if attn.in_proj_bias is not None else None
    v = attn.out_proj(F.linear(last.ln_1(x), w_v, b_v))
    v = last.ls_1(v) if hasattr(last, "ls_1") else v
    tokens = visual.ln_post(v[:, 1:]) @ visual.proj  # [n, gh * gw, D]
    return F.normalize(tokens.float(), dim=-1).reshape(n, gh, gw, -1)


def maskclip_view(image: np.ndarray, encoder, max_height: int = 1080) -> np.ndarray:
    """Dense MaskCLIP features of one RGB uint8 [H, W, 3] image -> float32 [h / p, w / p, D] unit rows
    (h, w = the image downscaled to ``max_height``; grid = ``round(h / p) x round(w / p)``, at least 1x1)."""
    import torch
    import torch.nn.functional as F

    visual = _vision_tower(encoder)
    k = visual.conv1.kernel_size
    ph, pw = k if isinstance(k, tuple) else (k, k)
    H, W = image.shape[:2]
    h, w = H, W
    if max_height and H > max_height:
        h, w = max_height, max(1, round(W * max_height / H))
    gh, gw = max(1, round(h / ph)), max(1, round(w / pw))
    device = visual.conv1.weight.device
    x = torch.from_numpy(np.array(image[..., :3], dtype=np.uint8)).permute(2, 0, 1)[None].to(device, torch.float32) / 255.0
    if x.shape[-2:] != (gh * ph, gw * pw):
        x = F.interpolate(x, size=(gh * ph, gw * pw), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(getattr(encoder, "mean", (0.48145466, 0.4578275, 0.40821073)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(getattr(encoder, "std", (0.26862954, 0.26130258, 0.27577711)), device=device).view(1, 3, 1, 1)
    x = (x.clamp(0, 1) - mean) / std
    with torch.no_grad():
        f = maskclip_patch_features(visual, x)[0]
    return f.cpu().numpy().astype(np.float32)


def maskclip_settings(encoder, max_height: int) -> Dict[str, Any]:
    """What MaskCLIP dense features depend on (``dense_features/manifest.json`` key)."""
    ckpt = getattr(encoder, "checkpoint", None)
    return {
        "mode": "maskclip",
        "generator": f"unisem_ns.cues.sam_clip.maskclip/{MASKCLIP_VERSION}",
        "encoder": dict(encoder.to_json()),
        "clip_checkpoint_bytes": Path(ckpt).stat().st_size if ckpt and Path(ckpt).is_file() else None,
        "max_height": int(max_height),
    }


def run_maskclip(
    scene: Path,
    encoder,
    max_height: int = 1080,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CueRunReport:
    """MaskCLIP dense features for every image of ``scene`` into ``dense_features/`` (resumable, atomic,
    folder locked; encoder.json = ``encoder.to_json()``). ``encoder`` is an open_clip
    :class:`~unisem_ns.language.encoders.OpenClipTextEncoder` (its ViT image tower is used)."""
    scene = Path(scene)
    _vision_tower(encoder)  # fail before touching any file
    stems = scene_stems(scene)
    meta = read_transforms(scene)
    images = {Path(f["file_path"]).stem: scene / f["file_path"] for f in meta["frames"]}
    with DenseCueCache(scene, stems, maskclip_settings(encoder, max_height), encoder.to_json(), log=log) as cache:
        todo = cache.begin()
        for stem in track(todo, f"MaskCLIP dense features ({len(todo)} views)", enabled=progress):
            write_dense_features(scene, stem, maskclip_view(_load_rgb(images[stem]), encoder, max_height))
            cache.mark_done(stem)
        return cache.finish()
