"""Where and with what a run happened: machine, library versions, devices."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

import jax


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "machine": platform.machine(), "cpu_count": os.cpu_count()}


def versions() -> dict[str, str | None]:
    return {"python": sys.version.split()[0], "jax": jax.__version__,
            "jaxlib": _version("jaxlib"), "numpy": _version("numpy"),
            "scipy": _version("scipy"), "torch": _version("torch"),
            "srrecnn_jax": _version("srrecnn-jax")}


def devices() -> list[dict[str, Any]]:
    return [{"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in jax.devices()]


def device() -> dict[str, str]:
    """The device every JAX case runs on (the default one)."""
    d = jax.devices()[0]
    return {"platform": d.platform, "kind": d.device_kind}


def env_vars() -> dict[str, str]:
    names = ("XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
    return {n: os.environ[n] for n in names if n in os.environ}
