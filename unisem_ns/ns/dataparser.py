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
    require_language_cues: bool = False
    """Fail up front when the scene has no 2D language cues (set by the semantic methods)."""
    require_object_masks: bool = False
    """Fail up front when the scene has no 2D instance masks in object_mask/ (set by the instance methods)."""


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
            outputs = super()._generate_dataparser_outputs(split, **kwargs)
        finally:
            self.config.eval_mode = eval_mode
        # Datasets need the scene root (cues, gt/) and whether ground truth may be read (never in training).
        scene = Path(self.config.data)
        outputs.metadata["scene_dir"] = scene
        outputs.metadata["split"] = split
        encoder_json = scene / "language_features" / "encoder.json"
        if encoder_json.exists():
            outputs.metadata["cue_encoder"] = json.loads(encoder_json.read_text())
        elif self.config.require_language_cues:
            raise exit_on_input_error(
                InputError(
                    f"{scene / 'language_features'}: no 2D language cues; make them with "
                    f"`unisem-preprocess --data {scene} --mode simulate` (scenes with gt/) or `--mode sam-clip`"
                )
            )
        if self.config.require_object_masks and split == "train":
            _check_object_masks(scene, outputs.image_filenames)
        classes = scene / "gt" / "classes.json"
        if classes.exists():  # the label set for evaluation only; no labels are read for training
            outputs.metadata["class_names"] = json.loads(classes.read_text())
        return outputs


def _check_object_masks(scene: Path, image_filenames) -> None:
    folder = scene / "object_mask"
    fix = (f"make them with `unisem-preprocess --data {scene} --mode simulate` (scenes with gt/) or `--mode sam-clip`, "
           "or copy Gaussian Grouping / LERF-Mask masks there (one <image stem>.png per view)")
    if not folder.is_dir():
        raise exit_on_input_error(InputError(f"{folder}: no 2D instance masks; {fix}"))
    missing = [Path(f).stem for f in image_filenames if not (folder / f"{Path(f).stem}.png").exists()]
    if missing:
        raise exit_on_input_error(
            InputError(f"{folder / (missing[0] + '.png')}: missing ({len(missing)} training views have no mask); {fix}")
        )


def _has_split_lists(scene: Path) -> bool:
    meta = json.loads((Path(scene) / "transforms.json").read_text())
    return "train_filenames" in meta and ("test_filenames" in meta or "val_filenames" in meta)


unisem_dataparser = DataParserSpecification(
    config=UnisemDataParserConfig(),
    description="transforms.json scene checked up front, with GT depth; the default scene when --data is omitted.",
)
