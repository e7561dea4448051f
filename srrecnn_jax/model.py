"""SRReCNN3D / SRCNN3D as pure functions over a plain parameter pytree.

Arrays are channels-last, ``(B, X, Y, Z, C)``, with the image axes in the
(x, y, z) order the Caffe weights assume. Params are
``{"conv1": {"kernel": (k, k, k, C_in, C_out), "bias": (C_out,)}, ...}``.
Nothing here is jit-compiled: callers jit with the config as a static argument.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from srrecnn_jax import conv, operands
from srrecnn_jax.config import ModelConfig

Params = dict[str, dict[str, Any]]


def layer_names(config: ModelConfig) -> list[str]:
    return [f"conv{i + 1}" for i in range(config.layers)]


def param_shapes(config: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Expected shape of every parameter, for checking imported weights."""
    shapes, c_in = {}, config.in_channels
    for name, k, c_out in zip(layer_names(config), config.kernels, config.filters):
        shapes[name] = {"kernel": (k, k, k, c_in, c_out), "bias": (c_out,)}
        c_in = c_out
    return shapes


def init(key: jax.Array, config: ModelConfig) -> Params:
    """He (fan-in) Gaussian weights, std sqrt(2 / (C_in k^3)), zero biases, as the original."""
    shapes = param_shapes(config)
    return {name: init_layer(sub, shapes[name]["kernel"])
            for name, sub in zip(shapes, jax.random.split(key, config.layers))}


def init_layer(key: jax.Array, kernel_shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """One layer's ``{"kernel": (k, k, k, C_in, C_out), "bias": (C_out,)}``: He (fan-in)
    Gaussian kernel drawn from ``key``, zero bias."""
    fan_in = math.prod(kernel_shape[:4])
    return {
        # Drawn flat, then shaped: the same numbers (threefry counts elements in
        # row-major order), but XLA compiles a 1-D draw in well under a second where
        # some 5-D kernel shapes took it 3-10 s on CPU.
        "kernel": jax.random.normal(key, (math.prod(kernel_shape),), jnp.float32)
        .reshape(kernel_shape) * math.sqrt(2.0 / fan_in),
        "bias": jnp.zeros(kernel_shape[-1:], jnp.float32),
    }


def param_count(params: Params) -> int:
    return sum(int(math.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def forward(params: Params, x: jax.Array, padding: str, mask: jax.Array | None = None,
            precision: str = "fp32", algorithm: str = "auto",
            differentiable: bool = False) -> jax.Array:
    """The convolution chain alone: ReLU after every layer but the last.

    Args:
      params: the parameter pytree.
      x: ``(B, X, Y, Z, C_in)``.
      padding: ``"SAME"`` (zero padding per layer) or ``"VALID"``.
      mask: optional ``(B, X, Y, Z, 1)`` 0/1 array, centre-cropped to each
        hidden activation and multiplied into it. A tile cut from a
        zero-padded volume, run with VALID convolutions and the volume's mask,
        then sees exactly the per-layer zero padding of the whole volume where
        the volume ends (see ``inference``).
      precision: one of ``config.PRECISIONS`` (see ``conv``).
      algorithm: convolution algorithm, one of ``conv.ALGORITHMS``; ``auto``
        picks Winograd F(4, 3) (hidden layers) and shifted matrix products (first
        and last) on CPU, XLA's convolution elsewhere; ``exact`` Winograd F(2, 3)
        instead, exact to float32 rounding.
      differentiable: for gradients (training): every layer is one ``conv.conv3d``,
        whose Winograd form has a gradient of its own, instead of the fused chain of
        zero-bordered hidden layers (faster for inference, slow to differentiate).

    Returns:
      ``(B, X', Y', Z', C_out)`` float32; X' = X for SAME, X - sum(k - 1) for VALID.
    """
    names = sorted(params, key=lambda n: int(n[4:]))
    # SAME 3x3x3 layers on CPU: the activations keep a zero border between the
    # Winograd hidden layers instead of being padded again for each (see conv).
    bordered = (padding == "SAME" and mask is None and not differentiable
                and keeps_zero_border(params, algorithm))
    if bordered:
        x = _border(x)
    for i, name in enumerate(names):
        kernel, bias = params[name]["kernel"], params[name]["bias"]
        last = i == len(names) - 1
        layer_precision = operands.layer_precision(precision, i)
        if bordered and not last and conv.winograd_applies(kernel):
            x = conv.relu_layer_bordered(x, kernel, bias, layer_precision, algorithm)
            continue
        x = conv.conv3d(x, kernel, "VALID" if bordered else padding, layer_precision,
                        algorithm) + bias.astype(jnp.float32)
        if not last:
            x = jax.nn.relu(x)
            if mask is not None:
                crop = [(m - n) // 2 for m, n in zip(mask.shape[1:4], x.shape[1:4])]
                x = x * mask[:, crop[0]:crop[0] + x.shape[1], crop[1]:crop[1] + x.shape[2],
                             crop[2]:crop[2] + x.shape[3]]
            if bordered:
                x = _border(x)
    return x


def keeps_zero_border(params: Params, algorithm: str = "auto") -> bool:
    """Whether a SAME network runs its hidden layers between zero-bordered activations
    (CPU Winograd, every kernel 3^3): ``forward`` and the z slabs of ``tiling``."""
    return (conv.resolve_algorithm(algorithm) in conv.WINOGRADS
            and all(layer["kernel"].shape[:3] == (3, 3, 3) for layer in params.values()))


def pad_input(x, config: ModelConfig):
    """``(..., X, Y, Z, C)`` padded by the receptive radius R along X, Y, Z, as the model
    pads its input: zeros for ``same`` models, edge replication for ``edge_valid``.

    VALID convolutions of the result give the model's ``X x Y x Z`` output (for
    ``same`` models with the volume mask of ``forward``). NumPy in, NumPy out;
    JAX in, JAX out.
    """
    r = config.receptive_radius
    widths = [(0, 0)] * (x.ndim - 4) + [(r, r)] * 3 + [(0, 0)]
    mode = "edge" if config.padding == "edge_valid" else "constant"
    if isinstance(x, np.ndarray):
        return np.pad(x, widths, mode=mode)
    if mode == "constant":
        return jnp.pad(x, widths)
    # jnp.pad's edge mode slices every axis, the batch axis too, which a batch split
    # over devices (training) does not allow; repeat the edge planes axis by axis.
    for axis in range(x.ndim - 4, x.ndim - 1):
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
        x = jnp.concatenate([jnp.repeat(first, r, axis), x, jnp.repeat(last, r, axis)], axis)
    return x


def _border(x: jax.Array) -> jax.Array:
    """``(B, X, Y, Z, C)`` -> ``(B, X + 2, Y + 2, Z + 2, C)`` with a border of zeros."""
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))


def apply(params: Params, x: jax.Array, config: ModelConfig, precision: str = "fp32",
          algorithm: str = "auto", differentiable: bool = False) -> jax.Array:
    """The whole model on ``(B, X, Y, Z, C_in)``; returns ``(B, X, Y, Z, C_out)``.

    ``same`` models pad every layer with zeros; ``edge_valid`` models (SRCNN3D)
    edge-replicate the input by the receptive radius and use valid
    convolutions. With ``residual`` the input's channel 0 (the interpolated
    image) is added to the output, in float32. ``precision``, ``algorithm``,
    ``differentiable``: see ``forward``.
    """
    if config.padding == "edge_valid":
        y = forward(params, pad_input(x, config), "VALID", precision=precision, algorithm=algorithm,
                    differentiable=differentiable)
    else:
        y = forward(params, x, "SAME", precision=precision, algorithm=algorithm,
                    differentiable=differentiable)
    if config.residual:
        y = y + x[..., :1]
    return y
