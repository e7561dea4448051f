"""How big an image may be: a fixed voxel limit, and this machine's memory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: The most voxels one image may have, input or output, whatever the memory: 2^32 (a
#: 1625^3 volume; 16 GiB as float32).
MAX_VOXELS = 2**32


def memory_bytes() -> int:
    """The memory one process may use: the machine's physical memory, or the cgroup
    (container) limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def size_problem(voxels: float, bytes_per_voxel: float) -> str | None:
    """Why an image of ``voxels`` voxels, needing ``bytes_per_voxel`` bytes of memory each,
    cannot be handled here (more than ``MAX_VOXELS``, or than ``memory_bytes()``), or
    None when it can."""
    if not voxels <= MAX_VOXELS:
        return f"more than the {MAX_VOXELS:,} voxels supported"
    need, have = voxels * bytes_per_voxel, memory_bytes()
    if need > have:
        return (f"needing about {need / 2**30:.3g} GiB of memory, more than the "
                f"{have / 2**30:.3g} GiB of this machine")
    return None


def size_text(size: Sequence[float]) -> str:
    """``8x7x6``: an image size, each entry rounded to a whole number when finite."""
    return "x".join(f"{round(n)}" if np.isfinite(n) else f"{n}" for n in size)
