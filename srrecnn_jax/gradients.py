"""SAME 3x3x3 convolutions with gradients of their own, and the kernel gradient.

Differentiating the Winograd or shifted-product convolutions through autodiff is slow
(XLA transposes the folded operands element by element) and, for the kernel, inexact:
a kernel entry that is exactly zero through the direct convolution (a dead channel)
would come out of the Winograd transforms as rounding noise. Here the input's gradient
is the same convolution of ``g`` by the flipped, transposed kernel, and the kernel's is
the direct sum over voxels (``kernel_gradient``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from srrecnn_jax.matmul import MIN_MATMUL_CHANNELS, volume_matmul
from srrecnn_jax.operands import cast, padded, precision_arguments
from srrecnn_jax.winograd import valid_convolution

#: Rows per block of the kernel gradient's products: measured best of 1024-16384 on a
#: batch of 16 21^3 patches, C = 64 (0.39 s against 0.48-0.52 s).
GRADIENT_BLOCK_ROWS = 1024


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def winograd_same(x: jax.Array, kernel: jax.Array, precision: str, tile: int) -> jax.Array:
    """SAME 3x3x3 convolution by Winograd, with a gradient of its own (see ``_same_vjp``)."""
    return valid_convolution(padded(x, kernel, "SAME"), kernel, precision, tile)


def _same_forward(x: jax.Array, kernel: jax.Array, precision: str, tile: int):
    return winograd_same(x, kernel, precision, tile), (x, kernel)


def _same_vjp(precision: str, tile: int, residuals: tuple,
              g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gradients of a SAME convolution: the input's is the SAME convolution of ``g`` by
    the kernel flipped along x, y, z with C_in and C_out swapped, by Winograd too (2.25x
    fewer products than differentiating XLA's); the kernel's is the direct sum over
    voxels of input times ``g`` products (``kernel_gradient``), so that an entry that is
    exactly zero through the direct convolution (a dead channel) stays exactly zero:
    through the Winograd transforms it would come out as rounding noise, which Adam's
    normalised step turns into an update."""
    x, kernel = residuals
    return (winograd_same(g, _transposed(kernel), precision, tile),
            kernel_gradient(x, g, precision).astype(kernel.dtype))


def _transposed(kernel: jax.Array) -> jax.Array:
    """The kernel of a SAME convolution's input gradient: flipped along x, y and z, with
    C_in and C_out swapped."""
    return jnp.flip(kernel, (0, 1, 2)).swapaxes(3, 4)


def kernel_gradient(x: jax.Array, g: jax.Array, precision: str) -> jax.Array:
    """``d<conv(x, w, SAME), g>/dw`` for a 3x3x3 ``w``: ``(B, X, Y, Z, C_in)``, ``(B, X, Y,
    Z, C_out)`` -> float32 ``(3, 3, 3, C_in, C_out)``, the direct sum over voxels of
    shifted inputs times ``g``, as matrix products over flattened rows.

    Each volume, padded by one voxel, is flattened to rows of channels (``g`` padded at
    the far ends to the same grid, so its padding rows are zeros): tap ``(a, b, c)``'s
    input for an output row ``r`` is then row ``r + (a * (Y + 2) + b) * (Z + 2) + c``.
    The three z taps are adjacent rows, set side by side (depth ``3 * C_in``); each of the
    nine (a, b) taps is one product of ``g``, transposed, by the row-shifted inputs,
    ``(C_out, rows) @ (rows, 3 * C_in)``, accumulated over blocks of
    ``GRADIENT_BLOCK_ROWS`` rows so the operands stay in cache: 0.36 s for a 64 -> 64
    layer on 16 21^3 patches against 0.60 s for XLA's own (its CPU convolution). A
    term is a product of one input and one ``g`` value, as in the direct formula, so
    an entry that is zero there (a dead channel) is exactly zero here.
    """
    dtype, arithmetic = precision_arguments(precision)
    batch, nx, ny, nz, c_in = x.shape
    c_out = g.shape[-1]
    py, pz = ny + 2, nz + 2
    rows = batch * (nx + 2) * py * pz
    outer = [(a * py + b) * pz for a in range(3) for b in range(3)]
    size = GRADIENT_BLOCK_ROWS
    blocks = -(-rows // size)
    pad = ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0))
    flat_x = jnp.pad(jnp.pad(x.astype(dtype), pad).reshape(rows, c_in),
                     ((0, blocks * size - rows + outer[-1] + 2), (0, 0)))
    flat_g = jnp.pad(jnp.pad(g.astype(dtype), ((0, 0),) + ((0, 2),) * 3 + ((0, 0),)
                             ).reshape(rows, c_out), ((0, blocks * size - rows), (0, 0)))
    span = size + outer[-1]

    def operands(i: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Block ``i``: the inputs with their z taps side by side ``(span, 3 C_in)`` and
        ``g``'s rows ``(size, C_out)``."""
        part = jax.lax.dynamic_slice_in_dim(flat_x, i * size, span + 2)
        folded = jnp.concatenate([part[c:c + span] for c in range(3)], axis=1)
        return folded, jax.lax.dynamic_slice_in_dim(flat_g, i * size, size)

    def accumulate(i: jax.Array, total: jax.Array) -> jax.Array:
        folded, rows_g = operands(i)
        # g's block transposed once, (C_out, rows): nine plain products by the shifted
        # inputs (0.39 s against 0.50 s with the inputs' transpose in each product).
        terms = [jnp.dot(rows_g.T, folded[o:o + size], **arithmetic).astype(jnp.float32)
                 for o in outer]
        return total + jnp.stack(terms)

    def chunked(i: jax.Array) -> jax.Array:
        """Block ``i``'s nine products, each summed in chunks of 64 rows, the chunks'
        sums then added pairwise."""
        folded, rows_g = operands(i)
        chunks = (size // 64, 64)
        terms = [jax.lax.dot_general(rows_g.reshape(chunks + (c_out,)),
                                     folded[o:o + size].reshape(chunks + (3 * c_in,)),
                                     (((1,), (1,)), ((0,), (0,))), **arithmetic)
                 for o in outer]  # (chunks, C_out, 3 C_in) each
        return _pairwise_sum(jnp.stack(terms, axis=1).astype(jnp.float32))

    if c_out < MIN_MATMUL_CHANNELS:
        # Thin outputs (the last layer): each product is a long dot of two vectors,
        # summed in order, 4x XLA's error against float64 at 1024 rows. In chunks of 64
        # rows added pairwise, within block and across blocks, it stays within 2x.
        total = _pairwise_sum(jax.lax.map(chunked, jnp.arange(blocks)))
    else:
        total = jax.lax.fori_loop(0, blocks, accumulate,
                                  jnp.zeros((9, c_out, 3 * c_in), jnp.float32))
    total = total.swapaxes(1, 2)
    return total.reshape(3, 3, 3, c_in, c_out)


winograd_same.defvjp(_same_forward, _same_vjp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul_same(x: jax.Array, kernel: jax.Array, precision: str) -> jax.Array:
    """SAME 3x3x3 convolution by shifted row products (the first and last layers), with a
    gradient of its own: the input's by the same products (the SAME convolution of ``g``
    by the flipped, transposed kernel), the kernel's by ``kernel_gradient``. Through
    autodiff, XLA transposed the folded taps of a whole batch element by element: 0.41 s
    of an 8.4 s train step (10L-64, 16 x 21^3) for the first layer alone."""
    x, kernel, arithmetic = cast(x, kernel, precision)
    # One volume at a time: the batch axis may be split over devices.
    return jax.vmap(lambda v: volume_matmul(v, kernel, arithmetic))(padded(x, kernel, "SAME"))


def _matmul_forward(x: jax.Array, kernel: jax.Array, precision: str):
    return matmul_same(x, kernel, precision), (x, kernel)


def _matmul_vjp(precision: str, residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    return (matmul_same(g, _transposed(kernel), precision),
            kernel_gradient(x, g, precision).astype(kernel.dtype))


matmul_same.defvjp(_matmul_forward, _matmul_vjp)


def _pairwise_sum(a: jax.Array) -> jax.Array:
    """The sum over ``a``'s first axis, halving it in turn (rounding error grows with
    the log of its length, not the length)."""
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            a = jnp.concatenate([a, jnp.zeros_like(a[:1])])
        a = a[0::2] + a[1::2]
    return a[0]
