"""Nerfstudio dataparser: transforms.json scenes checked up front, and the embedded default scene.

Kept free of datamanager imports: Nerfstudio loads dataparser entry points while its own datamanager
module is still importing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from unisem_ns.data.scene_io import InputError, validate_scene


def exit_on_input_error(err: InputError) -> "SystemExit":
    """Bad input ends the command with its one-line message instead of a traceback."""
    return SystemExit(f"unisem_ns: error: {err}")


@dataclass
class UnisemDataParserConfig(NerfstudioDataParserConfig):
    """Nerfstudio transforms.json scenes (DATA.md layout), checked up front; no --data means the
    embedded default scene (generated once into the cache)."""

    _target: Type = field(default_factory=lambda: UnisemDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Scene folder with transforms.json. Default: the embedded synthetic scene (made once, then cached)."""
    load_3D_points: bool = True
    """Initialise Gaussians from the scene's seed point cloud (ply_file_path) when it has one."""
    eval_mode: str = "filename"  # type: ignore[assignment]
    """Train/eval split: 'filename' uses transforms.json's train/test lists when present (else every 8th view)."""


class UnisemDataParser(Nerfstudio):
    config: UnisemDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs):
        if self.config.data is None:
            from unisem_ns.data.default_scene import default_scene_dir

            self.config.data = default_scene_dir()
            CONSOLE.log(f"No --data given: using the embedded default scene at {self.config.data}")
        try:
            validate_scene(self.config.data)
        except InputError as e:
            raise exit_on_input_error(e) from None
        eval_mode = self.config.eval_mode
        if eval_mode == "filename" and not _has_split_lists(self.config.data):
            self.config.eval_mode = "interval"
        try:
            return super()._generate_dataparser_outputs(split, **kwargs)
        finally:
            self.config.eval_mode = eval_mode


def _has_split_lists(scene: Path) -> bool:
    meta = json.loads((Path(scene) / "transforms.json").read_text())
    return "train_filenames" in meta and ("test_filenames" in meta or "val_filenames" in meta)


unisem_dataparser = DataParserSpecification(
    config=UnisemDataParserConfig(),
    description="transforms.json scene checked up front, with GT depth; the default scene when --data is omitted.",
)
