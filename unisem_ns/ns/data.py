"""Nerfstudio dataset and datamanager: full images plus ground-truth depth in each batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, Type

import torch
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.data_utils import get_depth_image_from_path

from unisem_ns.data.scene_io import load_depth, load_gt_maps
from unisem_ns.ns.dataparser import UnisemDataParserConfig


class UnisemDataset(InputDataset):
    """An InputDataset whose batches carry what the scene folder offers:

    - ``depth_image`` [H, W, 1] (dataparser-scaled metres) when the scene has depth maps (no depth network);
    - ``lang_seg`` [L, H, W] int and ``lang_feats`` [K, D] float16 when it has 2D language cues
      (``language_features/``, LangSplat layout) and the method asks for them;
    - ``object_mask`` [H, W] long (0 = unassigned) from ``object_mask/`` on the training split when the method
      asks for 2D instance cues;
    - ``gt_semantic`` / ``gt_instance`` [H, W] long from ``gt/`` on evaluation splits only: ground truth is
      never read for training.
    """

    load_language_cues: bool = False
    load_object_masks: bool = False

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.depth_filenames = self.metadata.get("depth_filenames")
        self.depth_unit_scale_factor = self.metadata.get("depth_unit_scale_factor", 1e-3)
        self.scene_dir = self.metadata.get("scene_dir")
        self.is_eval = self.metadata.get("split", "train") != "train"

    def get_metadata(self, data: Dict) -> Dict:
        idx = data["image_idx"]
        out: Dict = {}
        if self.depth_filenames is not None:
            height = int(self._dataparser_outputs.cameras.height[idx])
            width = int(self._dataparser_outputs.cameras.width[idx])
            path = Path(self.depth_filenames[idx])
            if path.suffix == ".npy":  # DATA.md: .npy depth is float metres (Nerfstudio would apply the unit scale)
                metres = torch.from_numpy(load_depth(path))[None, None]
                metres = torch.nn.functional.interpolate(metres, size=(height, width), mode="nearest")[0, 0]
                out["depth_image"] = (metres * self._dataparser_outputs.dataparser_scale)[..., None]
            else:
                scale = self.depth_unit_scale_factor * self._dataparser_outputs.dataparser_scale
                out["depth_image"] = get_depth_image_from_path(path, height, width, scale)
        if self.scene_dir is None:
            return out
        stem = Path(self._dataparser_outputs.image_filenames[idx]).stem
        if self.load_language_cues:
            from unisem_ns.cues.layout import load_language_cue

            seg, feats = load_language_cue(Path(self.scene_dir), stem)
            out["lang_seg"] = torch.from_numpy(seg.astype("int64"))
            out["lang_feats"] = torch.from_numpy(feats.astype("float16"))
        if self.load_object_masks and not self.is_eval:
            from unisem_ns.cues.layout import load_object_mask

            out["object_mask"] = torch.from_numpy(load_object_mask(Path(self.scene_dir), stem).astype("int64"))
        if self.is_eval:
            for key, labels in load_gt_maps(Path(self.scene_dir), stem).items():
                out[f"gt_{key}"] = torch.from_numpy(labels)
        return out


class UnisemCueDataset(UnisemDataset):
    """:class:`UnisemDataset` that also loads the 2D language cues (for the semantic methods)."""

    load_language_cues = True


@dataclass
class UnisemDatamanagerConfig(FullImageDatamanagerConfig):
    """Full-image datamanager over :class:`UnisemDataset` (images and depth cached in memory as uint8)."""

    _target: Type = field(default_factory=lambda: FullImageDatamanager[UnisemDataset])
    dataparser: AnnotatedDataParserUnion = field(default_factory=UnisemDataParserConfig)
    """Scene reader: unisem-data (default; transforms.json scenes, the default scene without --data), or a
    converting parser for raw datasets (replica-data, scannet-data, colmap-scene-data)."""
    cache_images_type: str = "uint8"  # type: ignore[assignment]
    requires_language_cues: ClassVar[bool] = False
    requires_object_masks: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # The method's data needs hold whichever parser the user picks on the command line.
        if self.requires_language_cues and hasattr(self.dataparser, "require_language_cues"):
            self.dataparser.require_language_cues = True
        if self.requires_object_masks and hasattr(self.dataparser, "require_object_masks"):
            self.dataparser.require_object_masks = True


@dataclass
class UnisemCueDatamanagerConfig(UnisemDatamanagerConfig):
    """Datamanager for the semantic methods: batches also carry the 2D language cues."""

    _target: Type = field(default_factory=lambda: FullImageDatamanager[UnisemCueDataset])
    requires_language_cues: ClassVar[bool] = True
