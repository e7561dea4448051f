"""3-D convolution for the network, in two exact formulations, at a chosen precision.

``xla``: ``lax.conv_general_dilated``; what GPUs run (cuDNN).

``matmul``: the convolution as shifted matrix products over the flattened
volume, for CPUs. XLA's CPU convolution (Eigen's, 55-60 GFLOP/s on the
project's 2-core machine) is much slower than its matrix product (about
190 GFLOP/s there), so the volume, padded, is flattened to rows of channels
``(X * Y * Z, C)``: a kernel offset ``(a, b, c)`` is then a fixed row offset
``(a * Y + b) * Z + c``, and an output row is the sum over offsets of input
rows times ``kernel[a, b, c]``. The ``k`` offsets along z are adjacent rows,
folded into one product of depth ``k * C``; the ``k^2`` others are row slices.
A layer with one input channel folds all ``k^3`` offsets into one product;
one with one output channel multiplies by all taps at once and sums the
taps' columns at their offsets. Rows are processed in blocks so a block's
operands stay in cache (and are recomputed, not stored, for gradients). Outputs
whose window leaves the volume are computed and dropped (a few percent at
64^3). Results equal ``xla``'s to float32 rounding (summation order differs).

Arrays are channels-last ``(B, X, Y, Z, C)``; kernels ``(k, k, k, C_in, C_out)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Arithmetic of the convolutions. ``fp32``: float32 products and sums
#: (``Precision.HIGHEST``). ``tf32``: float32 arrays at XLA's default
#: precision, which on GPUs with tensor cores rounds the products' inputs to
#: TF32 (10-bit mantissa); the same as fp32 on CPU. ``bf16``: activations and
#: kernels rounded to bfloat16, products accumulated in float32; biases,
#: residual and output stay float32, and so does the first layer (see
#: ``layer_precision``).
PRECISIONS = ("fp32", "tf32", "bf16")
IMPLEMENTATIONS = ("auto", "xla", "matmul")

_DIMS = ("NDHWC", "DHWIO", "NDHWC")
_BLOCK_ROWS = 8192  # output rows per block: measured best of 2048-32768 at 64^3, C = 64
# Layers with fewer input channels fold all taps into one product; with fewer
# output channels they take the taps as columns (the network's first and last).
_MIN_MATMUL_CHANNELS = 8


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def layer_precision(precision: str, index: int) -> str:
    """The precision of layer ``index`` (0-based) in a network run at ``precision``.

    At ``bf16`` the first layer stays ``fp32``: it reads the image intensities
    themselves, and rounding those to bfloat16's 8-bit mantissa alone cost
    0.30 dB of PSNR on an MNI x2 crop (10L-64 original weights), against
    0.011 dB with the first layer in float32. It is 0.2% of the FLOPs.
    """
    return "fp32" if precision == "bf16" and index == 0 else precision


def _operands(x: jax.Array, kernel: jax.Array, precision: str):
    """Operand dtype and the ``precision`` / ``preferred_element_type`` arguments."""
    if precision == "bf16":
        return (x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16),
                {"preferred_element_type": jnp.float32})
    lax_precision = jax.lax.Precision.HIGHEST if precision == "fp32" else jax.lax.Precision.DEFAULT
    return x.astype(jnp.float32), kernel.astype(jnp.float32), {"precision": lax_precision}


def pick(impl: str) -> str:
    """``auto`` -> ``matmul`` on CPU, ``xla`` elsewhere."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"conv must be one of {', '.join(IMPLEMENTATIONS)}, not {impl!r}")
    if impl != "auto":
        return impl
    return "matmul" if jax.default_backend() == "cpu" else "xla"


def conv3d(x: jax.Array, kernel: jax.Array, padding: str, precision: str = "fp32",
           impl: str = "auto") -> jax.Array:
    """``(B, X, Y, Z, C_in)`` * ``(k, k, k, C_in, C_out)`` -> float32 ``(B, X', Y', Z', C_out)``.

    ``padding``: ``"SAME"`` (zeros, odd k) or ``"VALID"``; ``precision``: one of
    ``PRECISIONS``; ``impl``: one of ``IMPLEMENTATIONS``.
    """
    check_precision(precision)
    x, kernel, arithmetic = _operands(x, kernel, precision)
    if pick(impl) == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), padding,
                                            dimension_numbers=_DIMS, **arithmetic)
    return _conv_matmul(x, kernel, padding, arithmetic)


def _conv_matmul(x: jax.Array, kernel: jax.Array, padding: str, arithmetic: dict) -> jax.Array:
    # Without the barrier XLA fuses the previous layer's bias and ReLU into the
    # row blocks' slices and the whole network runs slower than with XLA's
    # convolution (measured: 8.8 s against 4.9 s for 10L-64 on 64^3).
    x = jax.lax.optimization_barrier(x)
    if padding == "SAME":
        r = kernel.shape[0] // 2
        x = jnp.pad(x, ((0, 0), (r, r), (r, r), (r, r), (0, 0)))
    # One volume at a time: the batch axis may be split over devices.
    return jax.vmap(lambda v: _volume_matmul(v, kernel, arithmetic))(x)


def _volume_matmul(x: jax.Array, kernel: jax.Array, arithmetic: dict) -> jax.Array:
    """VALID convolution of one ``(X, Y, Z, C_in)`` volume by shifted row products."""
    k, c_in, c_out = kernel.shape[0], kernel.shape[3], kernel.shape[4]
    nx, ny, nz = x.shape[:3]
    out = (nx - k + 1, ny - k + 1, nz - k + 1)
    rows = nx * ny * nz
    offsets = [(a * ny + b) * nz + c for a in range(k) for b in range(k) for c in range(k)]
    blocks = -(-rows // _BLOCK_ROWS)
    flat = jnp.pad(x.reshape(rows, c_in),
                   ((0, blocks * _BLOCK_ROWS - rows + offsets[-1]), (0, 0)))
    block = (_output_shifts if c_out < _MIN_MATMUL_CHANNELS else _input_shifts)(
        flat, kernel, offsets, arithmetic)
    # Rematerialised under differentiation: otherwise every block's folded
    # operand is kept for the backward pass (70 GB for a batch of 64 21^3 patches).
    y = jax.lax.map(jax.checkpoint(block), jnp.arange(blocks))
    y = y.reshape(blocks * _BLOCK_ROWS, c_out)[:rows]
    return y.reshape(nx, ny, nz, c_out)[:out[0], :out[1], :out[2]]


def _input_shifts(flat: jax.Array, kernel: jax.Array, offsets: list[int], arithmetic: dict):
    """Row block ``i`` -> ``(rows, C_out)``: the k z-offsets folded into a product of
    depth ``k * C_in`` (all ``k^3`` when ``C_in`` is small), summed over the rest."""
    k, c_in, c_out = kernel.shape[0], kernel.shape[3], kernel.shape[4]
    fold = k ** 3 if c_in < _MIN_MATMUL_CHANNELS else k
    weights = kernel.reshape(k ** 3 // fold, fold * c_in, c_out)
    outer, inner = offsets[::fold], offsets[:fold]
    span = _BLOCK_ROWS + outer[-1]

    def block(i: jax.Array) -> jax.Array:
        part = jax.lax.dynamic_slice_in_dim(flat, i * _BLOCK_ROWS, _BLOCK_ROWS + offsets[-1])
        folded = jnp.concatenate([part[o:o + span] for o in inner], axis=1)
        total = None
        for w, offset in zip(weights, outer):
            term = jnp.dot(folded[offset:offset + _BLOCK_ROWS], w, **arithmetic)
            total = term if total is None else total + term
        return total.astype(jnp.float32)

    return block


def _output_shifts(flat: jax.Array, kernel: jax.Array, offsets: list[int], arithmetic: dict):
    """Row block ``i`` -> ``(rows, C_out)`` for thin outputs: one product with all
    ``k^3`` kernel taps as columns, then the taps' columns summed at their offsets."""
    k, c_in, c_out = kernel.shape[0], kernel.shape[3], kernel.shape[4]
    taps = jnp.moveaxis(kernel.reshape(k ** 3, c_in, c_out), 0, 1).reshape(c_in, -1)

    def block(i: jax.Array) -> jax.Array:
        part = jax.lax.dynamic_slice_in_dim(flat, i * _BLOCK_ROWS, _BLOCK_ROWS + offsets[-1])
        per_tap = jnp.dot(part, taps, **arithmetic).astype(jnp.float32)
        per_tap = per_tap.reshape(-1, k ** 3, c_out)
        return sum(per_tap[o:o + _BLOCK_ROWS, t] for t, o in enumerate(offsets))

    return block
