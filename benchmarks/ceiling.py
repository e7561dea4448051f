"""The matmul ceiling: a large square matmul per precision, timed like the cases."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.timing import jax_sync, measure

METHOD = {
    "fp32": "float32 x float32, Precision.HIGHEST",
    "tf32": "float32 x float32, Precision.DEFAULT (TF32 on tensor-core GPUs; fp32 on CPU)",
    "bf16": "bfloat16 x bfloat16, float32 accumulation (preferred_element_type=float32)",
}


def _matmul(a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
    if precision == "bf16":
        return jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                          preferred_element_type=jnp.float32)
    level = jax.lax.Precision.HIGHEST if precision == "fp32" else jax.lax.Precision.DEFAULT
    return jnp.matmul(a, b, precision=level)


def measure_ceiling(precision: str, n: int, repeats: int) -> dict[str, Any]:
    """TFLOP/s of an n x n x n matmul (2 n^3 FLOPs) at ``precision``, median of ``repeats``."""
    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    if precision == "bf16":  # cast outside the timed function: the inputs are bf16
        a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    fn = jax.jit(functools.partial(_matmul, precision=precision))
    timed = measure(lambda: fn(a, b), jax_sync, repeats, warmup=1)
    return {"precision": precision, "n": n, "flops": 2 * n ** 3, "method": METHOD[precision],
            **timed.to_dict(), "tflops": 2 * n ** 3 / timed.median / 1e12}
