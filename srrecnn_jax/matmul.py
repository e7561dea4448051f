"""The ``matmul`` convolution: shifted matrix products over the flattened volume.

For CPUs (the first and last layers, and kernels other than 3^3). XLA's CPU
convolution (Eigen's, 55-60 GFLOP/s on the project's 2-core machine) is much
slower than its matrix product (about 190 GFLOP/s there), so the volume,
padded, is flattened to rows of channels ``(X * Y * Z, C)``: a kernel offset
``(a, b, c)`` is then a fixed row offset ``(a * Y + b) * Z + c``, and an output
row is the sum over offsets of input rows times ``kernel[a, b, c]``. The ``k``
offsets along z are adjacent rows, folded into one product of depth ``k * C``;
the ``k^2`` others are row slices. A layer with one input channel folds all
``k^3`` offsets into one product; one with one output channel multiplies by all
taps at once and sums the taps' columns at their offsets. Rows are processed in
blocks so a block's operands stay in cache (and are recomputed, not stored, for
gradients). Outputs whose window leaves the volume are computed and dropped (a
few percent at 64^3). Results equal ``xla``'s to float32 rounding (summation
order differs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BLOCK_ROWS = 8192  # output rows per block: measured best of 2048-32768 at 64^3, C = 64
#: Layers with fewer input channels fold all taps into one product; with fewer
#: output channels they take the taps as columns (the network's first and last).
MIN_MATMUL_CHANNELS = 8


def volume_matmul(x: jax.Array, kernel: jax.Array, arithmetic: dict) -> jax.Array:
    """VALID convolution of one ``(X, Y, Z, C_in)`` volume by shifted row products."""
    k, c_in, c_out = kernel.shape[0], kernel.shape[3], kernel.shape[4]
    nx, ny, nz = x.shape[:3]
    out = (nx - k + 1, ny - k + 1, nz - k + 1)
    rows = nx * ny * nz
    offsets = [(a * ny + b) * nz + c for a in range(k) for b in range(k) for c in range(k)]
    blocks = -(-rows // _BLOCK_ROWS)
    flat = jnp.pad(x.reshape(rows, c_in),
                   ((0, blocks * _BLOCK_ROWS - rows + offsets[-1]), (0, 0)))
    block = (_output_shifts if c_out < MIN_MATMUL_CHANNELS else _input_shifts)(
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
    fold = k ** 3 if c_in < MIN_MATMUL_CHANNELS else k
    weights = kernel.reshape(k ** 3 // fold, fold * c_in, c_out)
    outer = offsets[::fold]
    span = _BLOCK_ROWS + outer[-1]
    # Row strides of the folded axes, innermost (z) first: the k z offsets, then (all k^3)
    # the y and x ones. Each fold shifts the previous one's columns k times, so the
    # columns come out in the kernel's (x, y, z) order, as ``offsets`` lists them. The
    # same matrix as k^3 slices of the block, but XLA compiles 3k slices far faster
    # (SRCNN3D's 9^3 first layer: 46 s against 4 s on 2 CPU cores, and runs 2x faster).
    strides = [1, offsets[k], offsets[k * k]] if fold == k ** 3 > k else [1]

    def block(i: jax.Array) -> jax.Array:
        part = jax.lax.dynamic_slice_in_dim(flat, i * _BLOCK_ROWS, _BLOCK_ROWS + offsets[-1])
        folded = part
        for level, stride in enumerate(strides):
            rows = span + sum((k - 1) * s for s in strides[level + 1:])
            folded = jnp.concatenate([folded[j * stride:j * stride + rows] for j in range(k)],
                                     axis=1)
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

