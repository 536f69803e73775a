"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

An interrupted writer leaves either the old file or the new one, never half of one; its temporary
(``.<name>.<random>.tmp``) can be swept with :func:`remove_stale_temps`. Two processes that fill the same
cache folder take turns through :func:`folder_lock`, so one never sweeps the other's temporaries.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".unisem.lock"


@contextmanager
def folder_lock(folder: Path, log: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/.unisem.lock``) for the ``with`` block.

    A second process asking for the same folder waits until the first is done (saying so once through
    ``log``); the lock goes with the process, so a killed holder never leaves the folder locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"{folder}: another run is writing here; waiting for it to finish")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextmanager
def atomic_file(path: Path):
    """Yield a binary file object in ``path``'s folder; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def atomic_save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    with atomic_file(path) as f:
        Image.fromarray(np.ascontiguousarray(arr)).save(f, format="PNG")


def remove_stale_temps(folder: Path) -> None:
    """Remove temporaries an interrupted writer left behind in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            try:
                p.unlink()
            except OSError:
                pass


def publish_dir(tmp: Path, final: Path, is_complete: Callable[[Path], bool]) -> Path:
    """Move a fully written folder ``tmp`` to ``final`` atomically and return ``final``.

    If another process already published a complete ``final``, that one wins and ``tmp`` is left for the caller
    to delete. An incomplete ``final`` (never produced by a publish) is moved aside and removed first.
    """
    if is_complete(final):
        return final
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.trash-", dir=final.parent))
        try:
            os.rename(final, trash / "old")
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, final)  # atomic; fails if a non-empty `final` appeared meanwhile
    except OSError:
        if is_complete(final):
            return final
        raise
    return final
