"""Timing: warm-up calls, then ``repeats`` timed calls, each synchronised with the device."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import flops


@dataclasses.dataclass
class Measured:
    """Wall seconds of the timed runs, and the output of the first (warm-up) call."""

    seconds: list[float]
    warmup: int
    warmup_seconds: list[float]
    first: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.seconds), "max_s": max(self.seconds),
                "repeats": len(self.seconds), "seconds": self.seconds, "warmup": self.warmup,
                "warmup_s": self.warmup_seconds}


def measure(call: Callable[[], Any], sync: Callable[[Any], Any], repeats: int,
            warmup: int = 1) -> Measured:
    """Run ``call`` ``warmup`` times untimed-for-the-median, then ``repeats`` timed times.

    Every call's result goes through ``sync`` before the clock stops (for JAX
    ``jax.block_until_ready``, for PyTorch on CUDA ``torch.cuda.synchronize``), so
    asynchronous dispatch does not hide device work. The first call's result
    (synchronised) is kept as ``first``; warm-up times (compilation included) are
    recorded too.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    first, warm = None, []
    for i in range(warmup):
        start = time.perf_counter()
        out = call()
        sync(out)
        warm.append(time.perf_counter() - start)
        if i == 0:
            first = out
        del out
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        sync(out)
        seconds.append(time.perf_counter() - start)
        if first is None:
            first = out
        del out
    return Measured(seconds, warmup, warm, first)


def measure_alternating(calls: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]],
                        repeats: int) -> dict[str, Measured]:
    """Time already-warm ``{name: (call, sync)}`` in turns, ``a b a b ...``.

    On a shared machine the speed drifts by tens of percent over minutes; taken
    in turns, both sides of a comparison see the same drift, and their ratio does
    not depend on which ran first.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (call, sync) in calls.items():
            start = time.perf_counter()
            out = call()
            sync(out)
            seconds[name].append(time.perf_counter() - start)
            del out
    return {name: Measured(s, 0, []) for name, s in seconds.items()}


def jax_sync(out: Any) -> Any:
    import jax

    return jax.block_until_ready(out)


def no_sync(out: Any) -> Any:
    """For host results (NumPy): nothing is pending."""
    return out


def paired(alone: Measured, torch_record: dict[str, Any], voxels: int, total_flops: float,
           ceiling: float | None) -> dict[str, Any]:
    """JAX's timing and rates: from the turns with PyTorch when they ran (the JAX runs
    timed alone before stay in the record as ``alone``), else ``alone``."""
    in_turns = torch_record.pop("rival_timing", None)
    timing = in_turns or alone.to_dict()
    record = {**timing, **flops.rates(timing["median_s"], voxels, total_flops, ceiling),
              "timed": "in turns with PyTorch" if in_turns else "alone"}
    if in_turns:
        record["alone"] = alone.to_dict()
    return record


def ratio(record: dict[str, Any]) -> float | None:
    """PyTorch median s / JAX median s (> 1: JAX faster), or None without PyTorch."""
    torch_s = (record["torch"].get("timing") or {}).get("median_s")
    return torch_s / record["jax"]["median_s"] if torch_s else None
