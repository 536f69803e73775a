"""The embedded default scene: generated once into a user cache, then reused.

The cache root is ``$UNISEM_CACHE_DIR`` if set, else ``~/.cache/unisem_ns``; the scene lives in
``<root>/scenes/default-v<GENERATOR_VERSION>``. It is rendered into a temporary sibling folder
and renamed into place, so an interrupted run never leaves a folder that looks complete, and
concurrent first calls from several processes are safe (the first rename wins, the others
discard their copy).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from unisem_ns.data.synthetic_scene import GENERATOR_VERSION, generate_scene
from unisem_ns.utils.atomic import publish_dir

__all__ = ["DEFAULT_SCENE_KWARGS", "DEFAULT_SCENE_NAME", "CACHE_ENV", "cache_root", "default_scene_dir"]

CACHE_ENV = "UNISEM_CACHE_DIR"
DEFAULT_SCENE_NAME = f"default-v{GENERATOR_VERSION}"
# Fixed content of the default scene (about 5-10 s to render on a 2-core CPU).
DEFAULT_SCENE_KWARGS: dict[str, Any] = {"seed": 0, "views": 48, "width": 128, "height": 96, "test_every": 8}
_STALE_TMP_S = 6 * 3600  # temp folders older than this are leftovers of killed runs

_log = logging.getLogger(__name__)


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$UNISEM_CACHE_DIR``, else ``~/.cache/unisem_ns``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unisem_ns"


def _is_complete(scene: Path) -> bool:
    # generate_scene writes transforms.json last, atomically.
    return (scene / "transforms.json").is_file()


def _sweep_stale(parent: Path, prefix: str) -> None:
    now = time.time()
    for p in parent.glob(prefix + "*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def default_scene_dir(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Path of the default scene folder (seed 0), generating it on first use.

    Args:
        cache_dir: cache root; defaults to ``$UNISEM_CACHE_DIR`` or ``~/.cache/unisem_ns``.
        progress: show a progress bar while generating.

    Returns:
        ``<root>/scenes/default-v<N>`` containing a complete scene (see ``generate_scene``).
    """
    parent = cache_root(cache_dir) / "scenes"
    final = parent / DEFAULT_SCENE_NAME
    if _is_complete(final):
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{DEFAULT_SCENE_NAME}.tmp-"
    _sweep_stale(parent, tmp_prefix)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _log.info("generating the default synthetic scene into %s (one-time)", final)
        generate_scene(tmp, progress=progress, **DEFAULT_SCENE_KWARGS)
        return publish_dir(tmp, final, _is_complete)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
