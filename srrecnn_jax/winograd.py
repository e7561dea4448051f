"""Winograd convolutions of 3x3x3 layers: the transforms and the volume kernel.

F(m, 3) along x and y (Lavin & Gray, 2016), with the three z taps folded into the
products' depth. F(2, 3) (``conv``'s ``winograd``): each 2 x 2 output column block
takes 16 products of transformed inputs ``(voxels, 3 * C_in)`` by transformed kernels
``(3 * C_in, C_out)`` instead of 36 of the untransformed ones: 2.25x fewer
multiply-adds. The transform entries are 0, +-1 and 1/2, so the results stay as close
to exact as the direct convolution's. F(4, 3) (``winograd4``): 36 products per 4 x 4
output columns instead of 144, 4x fewer multiply-adds, and 2.25 transformed values per
output instead of 4, so the transforms move less memory too; its transforms (points 0,
+-1, +-2) round more.

Both process blocks of about ``WINOGRAD_BLOCK_ROWS`` tiles by z planes in turn so
their operands stay in cache, recomputed, not stored, for gradients. F(4, 3)
applies its output transform as one small matrix product over the stacked
products (XLA fused the elementwise form into one loop that recomputed shared
sums per output: 3.5 s against 1.4 s for one 64-channel layer of a brain slab).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from srrecnn_jax.operands import precision_arguments

# Winograd F(m, 3) (Lavin & Gray, 2016): m outputs along an axis from m + 2 inputs,
# ``AT @ ((G @ kernel_taps) * (BT @ inputs))``, per tile size m: (BT, G, AT).
# F(2, 3)'s entries are 0, +-1 and 1/2: the transforms add only a few float32
# roundings. F(4, 3)'s (points 0, +-1, +-2) reach 8 and 1/24: larger roundings.
_WINOGRAD = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
         (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
         (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
         (0, 1, -1, 8, -8, 1))),
}
#: Rows of each product of a Winograd block (x tiles by y tiles by z planes): F(2, 3)
#: measured best of 512-4096 at 64^3, F(4, 3) of 512-4096 on a 196 x 232 x 16 slab.
#: The operands of one block stay in cache.
WINOGRAD_BLOCK_ROWS = 1024


class _Grid(NamedTuple):
    """The blocks of a Winograd volume: ``tx`` x ``ty`` tiles of ``m`` x ``m`` output
    columns each, ``nx`` x ``ny`` blocks, over ``oz`` output planes."""

    m: int
    tx: int
    ty: int
    nx: int
    ny: int
    oz: int

    @property
    def rows(self) -> int:
        """Rows of each product of a block: tiles by z planes."""
        return self.tx * self.ty * self.oz


def _grid(shape: tuple[int, ...], m: int, volumes: int) -> _Grid:
    """The blocks of the VALID output of an ``(X, Y, Z, ...)`` input, tile ``m``.

    A block: tx x ty tiles (m tx x m ty output columns), about WINOGRAD_BLOCK_ROWS
    tiles by Z in all, so its operands stay in cache. Under ``vmap`` every iteration
    takes one block of each volume: a batch of 16 21^3 patches ran a layer in 0.29 s
    with 1024 tiles per volume, 0.21 s with 64 (F(2, 3), 2 CPU cores).
    """
    ox, oy, oz = (n - 2 for n in shape[:3])
    target = WINOGRAD_BLOCK_ROWS / volumes
    ty, ny = _split(-(-oy // m), target / oz)
    tx, nx = _split(-(-ox // m), target / (ty * oz))
    return _Grid(m, tx, ty, nx, ny, oz)


def _transformed_kernel(kernel: jax.Array, m: int, dtype) -> jax.Array:
    """``G k G^T`` along x and y, the z taps folded into the depth: ``(m + 2, m + 2,
    3 * C_in, C_out)`` in ``dtype``, transformed in float32."""
    c_in, c_out = kernel.shape[3], kernel.shape[4]
    g = jnp.asarray(_WINOGRAD[m][1], jnp.float32)
    taps = jnp.einsum("pa,qb,abzio->pqzio", g, g, kernel,
                      precision=jax.lax.Precision.HIGHEST).reshape(m + 2, m + 2, 3 * c_in, c_out)
    return taps.astype(dtype)


def _tile_outputs(part: jax.Array, taps: jax.Array, grid: _Grid, precision: str) -> jax.Array:
    """The outputs of a block's tiles from its input ``part`` (z taps side by side):
    ``(m, m, ...)`` for F(2, 3), ``(m * m, ...)`` for F(4, 3), float32."""
    m, rows = grid.m, grid.rows
    bt, _, at = _WINOGRAD[m]
    dtype, arithmetic = precision_arguments(precision)
    products, sums = [], {}  # products[p * (m + 2) + q], sums[r, s]: (rows, C_out)
    for p, along_x in enumerate(_winograd_inputs(part, 0, bt, m)):
        for q, inputs in enumerate(_winograd_inputs(along_x, 1, bt, m)):
            product = jnp.dot(inputs.reshape(rows, -1).astype(dtype), taps[p, q],
                              **arithmetic).astype(jnp.float32)
            products.append(product)
            if m == 2:  # F(2, 3): each product added into its outputs at once
                for r, s in itertools.product(range(m), range(m)):
                    w = at[r][p] * at[s][q]
                    if w:
                        term = product if w == 1 else w * product
                        sums[r, s] = term if (r, s) not in sums else sums[r, s] + term
    if m == 2:
        return jnp.stack([jnp.stack([sums[r, 0], sums[r, 1]]) for r in (0, 1)])
    # F(4, 3): 16 outputs of up to 25 products each; added elementwise, XLA fused
    # them into one loop that recomputed shared sums per output (2.3x slower).
    return jnp.dot(jnp.asarray(np.kron(at, at), jnp.float32),
                   jnp.stack(products).reshape(len(products), -1),
                   precision=jax.lax.Precision.HIGHEST)


def _block(x: jax.Array, taps: jax.Array, grid: _Grid, precision: str,
           bias: jax.Array | None, planes: jax.Array | None, in_plane: jax.Array | None,
           i: jax.Array, j: jax.Array) -> jax.Array:
    """Block ``(i, j)`` of the output: ``(m tx, m ty, Z, C_out)``, with the bias, ReLU
    and masks applied when given."""
    m, tx, ty, oz = grid.m, grid.tx, grid.ty, grid.oz
    part = jax.lax.dynamic_slice(x, (i * m * tx, j * m * ty, 0, 0),
                                 (m * tx + 2, m * ty + 2) + x.shape[2:])
    part = jnp.concatenate([part[:, :, c:c + oz] for c in range(3)], axis=3)
    y = _tile_outputs(part, taps, grid, precision)
    y = y.reshape(m, m, tx, ty, oz, taps.shape[-1])
    if bias is not None:
        y = jax.nn.relu(y + bias)
    y = y.transpose(2, 0, 3, 1, 4, 5)  # (tx, m, ty, m, Z, C_out)
    y = y.reshape(m * tx, m * ty, oz, taps.shape[-1])
    if planes is not None:
        y = y * planes[:, None]
    if in_plane is not None:
        y = y * jax.lax.dynamic_slice(in_plane, (i * m * tx, j * m * ty, 0, 0),
                                      (m * tx, m * ty, 1, 1))
    return y


def _start(shape: tuple[int, ...], prefix: jax.Array | None, scratch: jax.Array | None,
           oz: int, padded: bool) -> jax.Array:
    """The buffer the blocks are written into: ``scratch`` with ``prefix`` written in when
    they fit, else zeros of ``shape`` after the planes of ``prefix``."""
    if (scratch is not None and prefix is not None and not padded
            and scratch.shape == shape[:2] + (prefix.shape[2] + oz, shape[3])):
        # The blocks write every interior voxel, the border is already zero: only the
        # prefix needs writing (a fresh buffer costs a pass over the whole slab).
        return jax.lax.dynamic_update_slice(scratch.astype(jnp.float32),
                                            prefix.astype(jnp.float32), (0, 0, 0, 0))
    start = jnp.zeros(shape, jnp.float32)
    if prefix is not None:
        pad = [(0, s - p) for s, p in zip(shape[:2], prefix.shape[:2])]
        start = jnp.concatenate([jnp.pad(prefix.astype(jnp.float32), pad + [(0, 0)] * 2),
                                 start], axis=2)
    return start


def volume_winograd(x: jax.Array, kernel: jax.Array, precision: str,
                    bias: jax.Array | None = None, z_border: bool = True,
                    planes: jax.Array | None = None,
                    in_plane: jax.Array | None = None, tile: int = 2,
                    prefix: jax.Array | None = None,
                    scratch: jax.Array | None = None, volumes: int = 1) -> jax.Array:
    """VALID 3x3x3 convolution of one float32 ``(X, Y, Z, C_in)`` volume, Winograd
    F(tile, 3) along x and y, the z taps folded into the products' depth.

    Each tile x tile block of output columns needs (tile + 2)^2 products of
    transformed inputs by transformed kernels instead of 9 tile^2: 2.25x fewer
    multiply-adds at tile 2, 4x at tile 4. Blocks of x and y tiles (about
    ``WINOGRAD_BLOCK_ROWS`` tiles by Z over the ``volumes`` of a batch this function is
    mapped over) are processed in turn, each written into the output in place. In a
    block the three z neighbours of each voxel are first set side by side ``(..., Z,
    3 * C_in)``, so each product has depth ``3 * C_in`` (the transforms are linear, so
    they commute with this).

    With ``bias``, returns ``relu(conv + bias)`` inside a zero border one voxel
    wide, ``(X, Y, Z, C_out)`` for an input ``(X, Y, Z, C_in)`` (see
    ``conv.relu_layer_bordered``), without a z border ``(X, Y, Z - 2, C_out)`` when not
    ``z_border``, times the ``planes`` ``(Z - 2,)`` and ``in_plane``
    ``(X - 2, Y - 2, 1, 1)`` masks when given, after the z planes of ``prefix`` (see
    ``conv.relu_layer_slab``); without ``bias``, the convolution ``(X - 2, Y - 2, Z - 2,
    C_out)``. ``scratch``: an array of the output's shape whose x and y border is zero,
    written over instead of a fresh zero array.
    """
    m, c_out = tile, kernel.shape[4]
    ox, oy = x.shape[0] - 2, x.shape[1] - 2
    grid = _grid(x.shape, m, volumes)
    # Odd sizes and partial last blocks: zeros beyond the volume, outputs dropped. Only
    # when needed: XLA copies the volume even for a pad of zero widths.
    extra = ((0, m * grid.tx * grid.nx - ox), (0, m * grid.ty * grid.ny - oy), (0, 0), (0, 0))
    if extra[0][1] or extra[1][1]:
        x = jnp.pad(x, extra)
        if in_plane is not None:
            in_plane = jnp.pad(in_plane, extra)
    taps = _transformed_kernel(kernel, m, precision_arguments(precision)[0])
    border = 0 if bias is None else 1
    z_border = border if z_border else 0
    z_start = z_border if prefix is None else prefix.shape[2]  # of the output planes

    def block(i: jax.Array, j: jax.Array) -> jax.Array:
        return _block(x, taps, grid, precision, bias, planes, in_plane, i, j)

    def write(k: jax.Array, out: jax.Array) -> jax.Array:
        i, j = k // grid.ny, k % grid.ny
        return jax.lax.dynamic_update_slice(
            out, jax.checkpoint(block)(i, j),
            (border + i * m * grid.tx, border + j * m * grid.ty, z_start, 0))

    shape = (m * grid.tx * grid.nx + 2 * border, m * grid.ty * grid.ny + 2 * border,
             grid.oz + 2 * z_border, c_out)
    start = _start(shape, prefix, scratch, grid.oz, bool(extra[0][1] or extra[1][1]))
    out = jax.lax.fori_loop(0, grid.nx * grid.ny, write, start)
    out = out[:ox + 2 * border, :oy + 2 * border]
    if border and m * grid.tx * grid.nx > ox:
        out = out.at[ox + 1:].set(0)
    if border and m * grid.ty * grid.ny > oy:
        out = out.at[:, oy + 1:].set(0)
    return out


def _combine(weights, arrays: list[jax.Array]) -> jax.Array:
    """``sum(w * a)`` over the nonzero weights, adding or subtracting where w is +-1."""
    total = None
    for w, a in zip(weights, arrays):
        if not w:
            continue
        if total is None:
            total = a if w == 1 else w * a
        elif w in (1, -1):
            total = total + a if w == 1 else total - a
        else:
            total = total + w * a
    return total


def _split(tiles: int, target: float) -> tuple[int, int]:
    """``tiles`` in ``n`` blocks of ``size`` (about ``target``, at least 1), the last one
    as full as the others can make it: 48 tiles at 11 -> 5 blocks of 10, not of 11."""
    n = -(-tiles // max(1, min(tiles, round(target))))
    return -(-tiles // n), n


def _winograd_inputs(x: jax.Array, axis: int, bt, m: int) -> list[jax.Array]:
    """The m + 2 transformed inputs ``BT @ (d0 .. d_{m+1})`` of every tile along
    ``axis`` (length m n + 2, tiles m apart): m + 2 arrays of length n."""
    n = (x.shape[axis] - 2) // m
    phases = [jax.lax.slice_in_dim(x, k, None, m, axis) for k in range(m)]
    d = [jax.lax.slice_in_dim(phases[k % m], k // m, k // m + n, axis=axis)
         for k in range(m + 2)]
    return [_combine(row, d) for row in bt]


def valid_convolution(x: jax.Array, kernel: jax.Array, precision: str, tile: int) -> jax.Array:
    """VALID 3x3x3 convolution of a float32 batch ``(B, X, Y, Z, C_in)``, F(tile, 3)."""
    return jax.vmap(lambda v: volume_winograd(v, kernel, precision, tile=tile,
                                              volumes=x.shape[0]))(x)
