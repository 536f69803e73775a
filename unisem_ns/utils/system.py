"""Process-level settings and a description of the machine for benchmark reports."""

from __future__ import annotations

import ctypes
import os
import platform
import sys


def tune_malloc() -> bool:
    """Keep glibc from returning large buffers to the OS after every render.

    The CPU renderer allocates and frees multi-MB temporaries on every call; with glibc's defaults
    each one is a fresh mmap that page-faults on first touch. Raising the mmap threshold, the trim
    threshold and the top pad (the same as ``MALLOC_MMAP_THRESHOLD_=33554432``
    ``MALLOC_TRIM_THRESHOLD_=68719476736`` ``MALLOC_TOP_PAD_=536870912``) keeps them in the heap.
    Returns True if applied (glibc only); a no-op elsewhere or when ``UNISEM_NO_MALLOC_TUNING`` is set.
    """
    if os.environ.get("UNISEM_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 33554432) == 1
    ok &= libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    ok &= libc.mallopt(m_top_pad, 536870912) == 1
    return bool(ok)


def machine_description() -> str:
    """One line naming the CPU, core count and memory (and the GPU if one is visible)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores{mem}"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return desc
