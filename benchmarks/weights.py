"""The networks' initial weights, made once per architecture and shared by the cases.

``model.init`` compiles a random sampler per layer shape, which takes seconds even for
a tiny net; every case of one architecture starts from the same weights
(``model.init(jax.random.key(0), recnn(layers, filters))``), kept on the host.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from srrecnn_jax import model
from srrecnn_jax.config import recnn


@functools.lru_cache(maxsize=8)
def initial_params(layers: int, filters: int) -> dict:
    """He-initialised parameters (NumPy, read-only) of ``recnn(layers, filters)``, seed 0."""
    params = jax.tree.map(np.asarray, model.init(jax.random.key(0), recnn(layers, filters)))
    for leaf in jax.tree_util.tree_leaves(params):
        leaf.setflags(write=False)
    return params
