"""Nerfstudio dataparsers for real datasets: convert on first use, then parse the scene as ``unisem-data``.

Each parser converts its raw dataset folder (``--data``) into our one scene layout (``docs/DATA.md``)
with the converters in ``unisem_ns.data`` (cached in ``<data>/unisem`` or ``--cache-dir``; a conversion whose
inputs and options are unchanged is reused as it is), then delegates to :class:`UnisemDataParser`, so every
``unisem-data`` option (``--eval-mode``, ``--load-3D-points``, ...) applies unchanged. Bad input ends with one
line naming the file and the fix.

    ns-train unisem-splat replica-data --data Replica/room_0/Sequence_1 --frame-step 5 --image-downscale 2
    ns-train unisem-splat scannet-data --data scans/scene0000_00 --label-map scannetv2-labels.combined.tsv
    ns-train unisem-splat colmap-scene-data --data lerf_mask/figurines

Kept free of datamanager imports, like ``unisem_ns.ns.dataparser``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Tuple, Type

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from unisem_ns.data.colmap_scene import ColmapSceneConfig, convert_colmap_scene
from unisem_ns.data.replica import ReplicaConfig, convert_replica
from unisem_ns.data.scannet import ScanNetConfig, convert_scannet
from unisem_ns.data.scene_io import InputError
from unisem_ns.ns.dataparser import UnisemDataParser, UnisemDataParserConfig, exit_on_input_error

__all__ = [
    "ReplicaDataParserConfig",
    "ScanNetDataParserConfig",
    "ColmapSceneDataParserConfig",
    "RealDataParser",
    "replica_dataparser",
    "scannet_dataparser",
    "colmap_scene_dataparser",
]


class RealDataParser(UnisemDataParser):
    """Converts ``config.data`` once (per parser instance) and parses the converted scene."""

    config: Any
    _converter: Callable[..., Path]
    _what: str = "dataset"

    def converted_scene(self) -> Path:
        """The converted scene folder (converting on first use)."""
        cached = getattr(self, "_scene", None)
        if cached is not None:
            return cached
        src = self.config.data
        if src is None:
            raise exit_on_input_error(InputError(f"no --data given; pass the {self._what} folder with --data DIR"))
        cfg = self.config.convert
        dst = Path(self.config.cache_dir) if self.config.cache_dir is not None else None
        try:
            scene = type(self)._converter(Path(src), dst, cfg, force=self.config.reconvert)
        except InputError as e:
            raise exit_on_input_error(e) from None
        self._scene = scene
        return scene

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs):
        scene = self.converted_scene()
        src = self.config.data
        self.config.data = scene
        try:
            return super()._generate_dataparser_outputs(split, **kwargs)
        finally:
            self.config.data = src


class ReplicaDataParser(RealDataParser):
    _converter = staticmethod(convert_replica)
    _what = "Replica sequence (Semantic-NeRF layout: traj_w_c.txt, rgb/, depth/, semantic_class/)"


class ScanNetDataParser(RealDataParser):
    _converter = staticmethod(convert_scannet)
    _what = "ScanNet scene (SensReader export: color/ depth/ pose/ intrinsic/, or an LSM/Uni3R test scene)"


class ColmapSceneDataParser(RealDataParser):
    _converter = staticmethod(convert_colmap_scene)
    _what = "COLMAP scene (images/ + sparse/0, Gaussian-Grouping / LERF-Mask layout)"


@dataclass
class ReplicaDataParserConfig(UnisemDataParserConfig):
    """Replica in the Semantic-NeRF layout (traj_w_c.txt, rgb/, depth/, semantic_class/, semantic_instance/),
    converted once into a unisem scene (cache: <data>/unisem), then parsed as unisem-data."""

    _target: Type = field(default_factory=lambda: ReplicaDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Replica sequence folder (Semantic-NeRF layout: traj_w_c.txt, rgb/rgb_<i>.png, depth/, semantic_class/)."""
    cache_dir: Optional[Path] = None
    """Where the converted scene goes (default: <data>/unisem)."""
    reconvert: bool = False
    """Convert again even when the cached conversion is current."""
    convert: ReplicaConfig = field(default_factory=ReplicaConfig)
    """Converter options (frames, split, resize, labels, links): ``--convert.<option>``."""

    def check_before_run(self) -> None:
        """Nothing yet: the folder is a raw dataset; the scene it converts to is checked when it is parsed."""


@dataclass
class ScanNetDataParserConfig(UnisemDataParserConfig):
    """ScanNet scene (SensReader export with label-filt/instance-filt, or an LSM/Uni3R test scene), converted
    once into a unisem scene (cache: <data>/unisem), then parsed as unisem-data."""

    _target: Type = field(default_factory=lambda: ScanNetDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """ScanNet scene folder (color/ depth/ pose/ intrinsic/ [label-filt/ instance-filt/]) or LSM test scene."""
    cache_dir: Optional[Path] = None
    """Where the converted scene goes (default: <data>/unisem)."""
    reconvert: bool = False
    """Convert again even when the cached conversion is current."""
    convert: ScanNetConfig = field(default_factory=ScanNetConfig)
    """Converter options (frames, split, resize, labels, links): ``--convert.<option>``."""

    def check_before_run(self) -> None:
        """Nothing yet: the folder is a raw dataset; the scene it converts to is checked when it is parsed."""


@dataclass
class ColmapSceneDataParserConfig(UnisemDataParserConfig):
    """COLMAP scene in the Gaussian-Grouping / LERF-Mask layout (images/, sparse/0 or transforms.json,
    object_mask/, images_train/, test_mask/), converted once into a unisem scene (cache: <data>/unisem)."""

    _target: Type = field(default_factory=lambda: ColmapSceneDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Scene folder with images/ and sparse/0 (COLMAP .bin or .txt) or a transforms.json."""
    cache_dir: Optional[Path] = None
    """Where the converted scene goes (default: <data>/unisem)."""
    reconvert: bool = False
    """Convert again even when the cached conversion is current."""
    convert: ColmapSceneConfig = field(default_factory=ColmapSceneConfig)
    """Converter options (frames, split, resize, labels, links): ``--convert.<option>``."""

    def check_before_run(self) -> None:
        """Nothing yet: the folder is a raw dataset; the scene it converts to is checked when it is parsed."""


replica_dataparser = DataParserSpecification(
    config=ReplicaDataParserConfig(),
    description="Replica (Semantic-NeRF layout) converted once into a unisem scene with GT depth, classes and instances.",
)
scannet_dataparser = DataParserSpecification(
    config=ScanNetDataParserConfig(),
    description="ScanNet (SensReader export + label maps, or LSM/Uni3R test scene) converted once into a unisem scene.",
)
colmap_scene_dataparser = DataParserSpecification(
    config=ColmapSceneDataParserConfig(),
    description="COLMAP scene (Gaussian-Grouping / LERF-Mask layout) converted once into a unisem scene.",
)
