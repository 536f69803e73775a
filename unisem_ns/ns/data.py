"""Nerfstudio dataset and datamanager: full images plus ground-truth depth in each batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Type

import torch
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.data_utils import get_depth_image_from_path

from unisem_ns.ns.dataparser import UnisemDataParserConfig


class UnisemDataset(InputDataset):
    """An InputDataset whose batches carry ``depth_image`` ([H, W, 1], dataparser-scaled metres) when
    the scene has depth maps. Unlike Nerfstudio's DepthDataset it never runs a depth network."""

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.depth_filenames = self.metadata.get("depth_filenames")
        self.depth_unit_scale_factor = self.metadata.get("depth_unit_scale_factor", 1e-3)

    def get_metadata(self, data: Dict) -> Dict:
        if self.depth_filenames is None:
            return {}
        idx = data["image_idx"]
        height = int(self._dataparser_outputs.cameras.height[idx])
        width = int(self._dataparser_outputs.cameras.width[idx])
        scale = self.depth_unit_scale_factor * self._dataparser_outputs.dataparser_scale
        depth = get_depth_image_from_path(self.depth_filenames[idx], height, width, scale)
        return {"depth_image": depth}


@dataclass
class UnisemDatamanagerConfig(FullImageDatamanagerConfig):
    """Full-image datamanager over :class:`UnisemDataset` (images and depth cached in memory as uint8)."""

    _target: Type = field(default_factory=lambda: FullImageDatamanager[UnisemDataset])
    dataparser: UnisemDataParserConfig = field(default_factory=UnisemDataParserConfig)
    cache_images_type: str = "uint8"  # type: ignore[assignment]
