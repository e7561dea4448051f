"""Peak memory: the device's (where it reports one) or the process's peak RSS on the host."""

from __future__ import annotations

import resource
import sys
from typing import Any


def host_peak_rss() -> int:
    """The process's peak resident set size in bytes (never reset)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def jax_peak(device=None) -> dict[str, Any]:
    """``peak_bytes_in_use`` of the JAX device, or the host's peak RSS where it has none (CPU).

    Both are peaks since the process started: JAX cannot reset its peak, so a
    case's figure is only its own where ``before`` is smaller (``raised`` true).
    """
    import jax

    device = device or jax.devices()[0]
    stats = device.memory_stats() or {}
    if stats.get("peak_bytes_in_use") is not None:
        return {"kind": "device peak_bytes_in_use", "bytes": int(stats["peak_bytes_in_use"]),
                "scope": "process (JAX cannot reset it)"}
    return {"kind": "host peak RSS", "bytes": host_peak_rss(),
            "scope": "process (JAX and PyTorch together; cannot be reset)"}


def with_before(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {**after, "before_bytes": before["bytes"], "raised": after["bytes"] > before["bytes"]}


def torch_reset(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def torch_peak(torch, device: str) -> dict[str, Any]:
    """``torch.cuda.max_memory_allocated`` since the last reset, or the host's peak RSS."""
    if device.startswith("cuda"):
        return {"kind": "torch.cuda.max_memory_allocated",
                "bytes": int(torch.cuda.max_memory_allocated()), "scope": "this case"}
    return {"kind": "host peak RSS", "bytes": host_peak_rss(),
            "scope": "process (JAX and PyTorch together; cannot be reset)"}


def xla_memory(compiled) -> dict[str, int] | None:
    """Bytes XLA planned for a compiled executable: arguments, outputs, temporaries."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if stats is None:
        return None
    out = {}
    for name in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes"):
        value = getattr(stats, name, None)
        if value is not None:
            out[name] = int(value)
    if out:
        out["total_bytes"] = (out.get("argument_size_in_bytes", 0)
                              + out.get("output_size_in_bytes", 0)
                              - out.get("alias_size_in_bytes", 0)
                              + out.get("temp_size_in_bytes", 0))
    return out or None
