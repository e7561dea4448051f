"""3-D convolution for the network, by one of several algorithms, at a chosen precision.

``algorithm``: ``auto`` (the default: ``winograd4`` on CPU, ``xla`` elsewhere),
``exact`` (``winograd`` on CPU, ``xla`` elsewhere), or one algorithm by name
(``ALGORITHMS``). This module picks one per layer and runs it; the algorithms live in
``matmul`` and ``winograd``, their gradients in ``gradients``, the precisions in
``operands``.

``xla``: ``lax.conv_general_dilated``; what GPUs run (cuDNN).

``winograd`` (for 3x3x3 layers with at least 8 channels in and out): Winograd
F(2, 3) along x and y, with the three z taps folded into the products' depth:
2.25x fewer multiply-adds than the direct convolution. The transform entries
are 0, +-1 and 1/2, so the results stay as close to exact as the direct
convolution's (tested against float64: within twice XLA's own float32 error).

``winograd4`` (the CPU default for inference): F(4, 3) likewise, 4x fewer
multiply-adds, and fewer transformed values per output, so the transforms move
less memory too. Its transforms (points 0, +-1, +-2) round more: through the
10-layer network on real brains its output is 1.4e-6-1.9e-6 of the output range
from a float64 reference, against 4.5e-7 for ``winograd`` (the project allows
3e-5; tested). Training uses ``exact``: its gradients must stay within twice
XLA's error. At ``bf16`` both run F(2, 3) (see ``_winograd_tile``).
``relu_layer_bordered`` runs a hidden layer between volumes that keep a zero
border, so a chain of them never pads.

``matmul``: the convolution as shifted matrix products over the flattened
volume, for CPUs (the first and last layers, and kernels other than 3^3); see
``matmul``. Results equal ``xla``'s to float32 rounding (summation order differs).

Arrays are channels-last ``(B, X, Y, Z, C)``; kernels ``(k, k, k, C_in, C_out)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from srrecnn_jax.gradients import matmul_same, winograd_same
from srrecnn_jax.matmul import MIN_MATMUL_CHANNELS, volume_matmul
from srrecnn_jax.operands import cast, check_precision, padded
from srrecnn_jax.winograd import valid_convolution, volume_winograd

#: The convolution algorithms ``algorithm`` takes (see the module's docstring).
ALGORITHMS = ("auto", "exact", "xla", "matmul", "winograd", "winograd4")
#: The Winograd algorithms and their output tile along x and y: F(2, 3) and F(4, 3).
WINOGRADS = {"winograd": 2, "winograd4": 4}

_DIMS = ("NDHWC", "DHWIO", "NDHWC")


def resolve_algorithm(algorithm: str) -> str:
    """``auto`` -> ``winograd4`` on CPU, ``exact`` -> ``winograd`` on CPU; both ``xla``
    elsewhere. Others as given."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, "
                         f"not {algorithm!r}")
    if algorithm not in ("auto", "exact"):
        return algorithm
    if jax.default_backend() != "cpu":
        return "xla"
    return "winograd4" if algorithm == "auto" else "winograd"


def _winograd_tile(algorithm: str, precision: str) -> int:
    """The Winograd output tile m of ``algorithm`` at ``precision``: 4 for ``winograd4``
    in float32; 2 otherwise. At ``bf16`` F(4, 3)'s transformed values, rounded to 8 bits,
    put the layer 4.7% of its range off the float32 result (F(2, 3): under 1%)."""
    return 4 if resolve_algorithm(algorithm) == "winograd4" and precision != "bf16" else 2


def winograd_applies(kernel: jax.Array) -> bool:
    """3x3x3 kernels between layers with enough channels; others use ``matmul``."""
    return kernel.shape[:3] == (3, 3, 3) and min(kernel.shape[3:]) >= MIN_MATMUL_CHANNELS


def conv3d(x: jax.Array, kernel: jax.Array, padding: str, precision: str = "fp32",
           algorithm: str = "auto") -> jax.Array:
    """``(B, X, Y, Z, C_in)`` * ``(k, k, k, C_in, C_out)`` -> float32 ``(B, X', Y', Z', C_out)``.

    ``padding``: ``"SAME"`` (zeros, odd k) or ``"VALID"``; ``precision``: one of
    ``config.PRECISIONS``; ``algorithm``: one of ``ALGORITHMS``.
    """
    check_precision(precision)
    algorithm = resolve_algorithm(algorithm)
    if algorithm in WINOGRADS and winograd_applies(kernel):
        # Transforms in float32 on the unrounded operands; products at ``precision``.
        x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
        if padding == "SAME":
            return winograd_same(x, kernel, precision, _winograd_tile(algorithm, precision))
        return valid_convolution(padded(x, kernel, padding), kernel, precision,
                                 _winograd_tile(algorithm, precision))
    if algorithm != "xla" and padding == "SAME" and kernel.shape[:3] == (3, 3, 3):
        return matmul_same(x.astype(jnp.float32), kernel.astype(jnp.float32), precision)
    x, kernel, arithmetic = cast(x, kernel, precision)
    if algorithm == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), padding,
                                            dimension_numbers=_DIMS, **arithmetic)
    # One volume at a time: the batch axis may be split over devices.
    x = padded(x, kernel, padding)
    return jax.vmap(lambda v: volume_matmul(v, kernel, arithmetic))(x)


def relu_layer_bordered(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                        precision: str = "fp32", algorithm: str = "auto") -> jax.Array:
    """A hidden layer, ``relu(conv(x) + bias)``, between zero-bordered volumes.

    ``x``: float32 ``(B, X + 2, Y + 2, Z + 2, C_in)``, a volume with a border of
    zeros one voxel wide (SAME padding, already in place); ``kernel``
    ``(3, 3, 3, C_in, C_out)`` with ``winograd_applies``. Returns
    ``(B, X + 2, Y + 2, Z + 2, C_out)``, again with a zero border, so a chain of
    hidden layers never copies a volume to pad it: each block of the Winograd
    convolution adds the bias, applies the ReLU and writes into the interior.
    ``algorithm``: ``winograd4`` (what ``auto`` picks) or ``winograd`` (``exact``).
    """
    kernel = kernel.astype(jnp.float32)
    tile = _winograd_tile(algorithm, precision)
    return jax.vmap(lambda v: volume_winograd(v.astype(jnp.float32), kernel, precision,
                                              bias=bias.astype(jnp.float32), tile=tile,
                                              volumes=x.shape[0]))(x)


def relu_layer_slab(x: jax.Array, kernel: jax.Array, bias: jax.Array, planes: jax.Array,
                    in_plane: jax.Array | None = None, precision: str = "fp32",
                    algorithm: str = "auto", prefix: jax.Array | None = None,
                    scratch: jax.Array | None = None) -> jax.Array:
    """A hidden layer on a z slab whose x and y borders are zeros: ``relu_layer_bordered``
    without a border along z, and with the slab's masks applied as each block is written.

    ``x``: float32 ``(X + 2, Y + 2, Z + 2, C_in)``, zero in the outer x and y planes
    (the z neighbours are real planes: the previous slab's last two, then this
    slab's); ``planes``: ``(Z,)`` 0/1, which output planes lie inside the volume;
    ``in_plane``: optional ``(X, Y, 1, 1)`` 0/1, which in-plane voxels do. Returns
    ``(X + 2, Y + 2, Z, C_out)``, ``relu(conv + bias) * planes * in_plane`` inside a
    zero x and y border, ready for the next layer without a copy to pad it. With
    ``prefix`` ``(X + 2, Y + 2, P, C_out)`` (the next layer's planes from the previous
    slab), returns ``(X + 2, Y + 2, P + Z, C_out)``: the prefix, then the output, so
    the next layer reads its input whole without a copy to join them. ``scratch``: an
    array of the output's shape whose x and y border is zero (a dead activation of the
    chain, donated), written over instead of a fresh zero array (see
    ``winograd.volume_winograd``).
    """
    return volume_winograd(x.astype(jnp.float32), kernel.astype(jnp.float32), precision,
                           bias=bias.astype(jnp.float32), z_border=False, planes=planes,
                           in_plane=in_plane, tile=_winograd_tile(algorithm, precision),
                           prefix=prefix, scratch=scratch)

