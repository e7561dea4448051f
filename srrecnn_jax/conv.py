"""3-D convolution for the network, in several formulations, at a chosen precision.

``impl``: ``auto`` (the default: ``winograd4`` on CPU, ``xla`` elsewhere), ``exact``
(``winograd`` on CPU, ``xla`` elsewhere), or one formulation by name.

``xla``: ``lax.conv_general_dilated``; what GPUs run (cuDNN).

``winograd`` (for 3x3x3 layers with at least 8 channels in and out): Winograd
F(2, 3) along x and y, with the three z taps folded into the products' depth.
Each 2 x 2 output column block takes 16 products of transformed inputs
``(voxels, 3 * C_in)`` by transformed kernels ``(3 * C_in, C_out)`` instead of
36 of the untransformed ones: 2.25x fewer multiply-adds. The transform entries
are 0, +-1 and 1/2, so the results stay as close to exact as the direct
convolution's (tested against float64: within twice XLA's own float32 error).

``winograd4`` (the CPU default for inference): F(4, 3) likewise, 36 products per
4 x 4 output columns instead of 144: 4x fewer multiply-adds, and 2.25 transformed
values per output instead of 4, so the transforms move less memory too. Its
transforms (points 0, +-1, +-2) round more: through the 10-layer network on real
brains its output is 1.4e-6-1.9e-6 of the output range from a float64 reference,
against 4.5e-7 for ``winograd`` (the project allows 3e-5; tested). Training uses
``exact``: its gradients must stay within twice XLA's error. At ``bf16`` both run
F(2, 3) (see ``_tile``).

Both process blocks of about ``WINOGRAD_BLOCK_ROWS`` tiles by z planes in turn so
their operands stay in cache, recomputed, not stored, for gradients. F(4, 3)
applies its output transform as one small matrix product over the stacked
products (XLA fused the elementwise form into one loop that recomputed shared
sums per output: 3.5 s against 1.4 s for one 64-channel layer of a brain slab).
``relu_layer_bordered`` runs a hidden layer between volumes that keep a zero
border, so a chain of them never pads.

``matmul``: the convolution as shifted matrix products over the flattened
volume, for CPUs (the first and last layers, and kernels other than 3^3).
XLA's CPU convolution (Eigen's, 55-60 GFLOP/s on the project's 2-core
machine) is much slower than its matrix product (about 190 GFLOP/s there), so
the volume, padded, is flattened to rows of channels ``(X * Y * Z, C)``: a
kernel offset ``(a, b, c)`` is then a fixed row offset ``(a * Y + b) * Z + c``,
and an output row is the sum over offsets of input rows times
``kernel[a, b, c]``. The ``k`` offsets along z are adjacent rows, folded into
one product of depth ``k * C``; the ``k^2`` others are row slices. A layer
with one input channel folds all ``k^3`` offsets into one product; one with
one output channel multiplies by all taps at once and sums the taps' columns
at their offsets. Rows are processed in blocks so a block's operands stay in
cache (and are recomputed, not stored, for gradients). Outputs whose window
leaves the volume are computed and dropped (a few percent at 64^3). Results
equal ``xla``'s to float32 rounding (summation order differs).

Arrays are channels-last ``(B, X, Y, Z, C)``; kernels ``(k, k, k, C_in, C_out)``.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from srrecnn_jax.config import PRECISIONS

# Arithmetic of the convolutions (``config.PRECISIONS``). ``fp32``: float32 products
# and sums (``Precision.HIGHEST``). ``tf32``: float32 arrays at XLA's default
# precision, which on GPUs with tensor cores rounds the products' inputs to
# TF32 (10-bit mantissa); the same as fp32 on CPU. ``bf16``: activations and
# kernels rounded to bfloat16, products accumulated in float32; biases,
# residual and output stay float32, and so does the first layer (see
# ``layer_precision``).
IMPLEMENTATIONS = ("auto", "exact", "xla", "matmul", "winograd", "winograd4")
#: The Winograd formulations and their output tile along x and y: F(2, 3) and F(4, 3).
WINOGRADS = {"winograd": 2, "winograd4": 4}

_DIMS = ("NDHWC", "DHWIO", "NDHWC")
_BLOCK_ROWS = 8192  # output rows per block: measured best of 2048-32768 at 64^3, C = 64
#: Rows per block of the kernel gradient's products: measured best of 1024-16384 on a
#: batch of 16 21^3 patches, C = 64 (0.39 s against 0.48-0.52 s).
GRADIENT_BLOCK_ROWS = 1024
# Layers with fewer input channels fold all taps into one product; with fewer
# output channels they take the taps as columns (the network's first and last).
_MIN_MATMUL_CHANNELS = 8
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


def _arithmetic(precision: str) -> tuple:
    """Operand dtype and the ``precision`` / ``preferred_element_type`` arguments."""
    if precision == "bf16":
        return jnp.bfloat16, {"preferred_element_type": jnp.float32}
    lax_precision = jax.lax.Precision.HIGHEST if precision == "fp32" else jax.lax.Precision.DEFAULT
    return jnp.float32, {"precision": lax_precision}


def _operands(x: jax.Array, kernel: jax.Array, precision: str):
    """Operands cast to the precision's dtype, and the product arguments."""
    dtype, arithmetic = _arithmetic(precision)
    return x.astype(dtype), kernel.astype(dtype), arithmetic


def pick(impl: str) -> str:
    """``auto`` -> ``winograd4`` on CPU, ``exact`` -> ``winograd`` on CPU; both ``xla``
    elsewhere. Others as given."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"conv must be one of {', '.join(IMPLEMENTATIONS)}, not {impl!r}")
    if impl not in ("auto", "exact"):
        return impl
    if jax.default_backend() != "cpu":
        return "xla"
    return "winograd4" if impl == "auto" else "winograd"


def _tile(impl: str, precision: str) -> int:
    """The Winograd output tile of ``impl`` at ``precision``: 4 for ``winograd4`` in
    float32; 2 otherwise. At ``bf16`` F(4, 3)'s transformed values, rounded to 8 bits,
    put the layer 4.7% of its range off the float32 result (F(2, 3): under 1%)."""
    return 4 if pick(impl) == "winograd4" and precision != "bf16" else 2


def winograd_applies(kernel: jax.Array) -> bool:
    """3x3x3 kernels between layers with enough channels; others use ``matmul``."""
    return kernel.shape[:3] == (3, 3, 3) and min(kernel.shape[3:]) >= _MIN_MATMUL_CHANNELS


def conv3d(x: jax.Array, kernel: jax.Array, padding: str, precision: str = "fp32",
           impl: str = "auto") -> jax.Array:
    """``(B, X, Y, Z, C_in)`` * ``(k, k, k, C_in, C_out)`` -> float32 ``(B, X', Y', Z', C_out)``.

    ``padding``: ``"SAME"`` (zeros, odd k) or ``"VALID"``; ``precision``: one of
    ``config.PRECISIONS``; ``impl``: one of ``IMPLEMENTATIONS``.
    """
    check_precision(precision)
    impl = pick(impl)
    if impl in WINOGRADS and winograd_applies(kernel):
        # Transforms in float32 on the unrounded operands; products at ``precision``.
        x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
        if padding == "SAME":
            return _winograd_same(x, kernel, precision, _tile(impl, precision))
        return _winograd_valid(_padded(x, kernel, padding), kernel, precision,
                               _tile(impl, precision))
    if impl != "xla" and padding == "SAME" and kernel.shape[:3] == (3, 3, 3):
        return _matmul_same(x.astype(jnp.float32), kernel.astype(jnp.float32), precision)
    x, kernel, arithmetic = _operands(x, kernel, precision)
    if impl == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), padding,
                                            dimension_numbers=_DIMS, **arithmetic)
    # One volume at a time: the batch axis may be split over devices.
    x = _padded(x, kernel, padding)
    return jax.vmap(lambda v: _volume_matmul(v, kernel, arithmetic))(x)


def _winograd_valid(x: jax.Array, kernel: jax.Array, precision: str, tile: int) -> jax.Array:
    return jax.vmap(lambda v: _volume_winograd(v, kernel, precision, tile=tile,
                                               volumes=x.shape[0]))(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _winograd_same(x: jax.Array, kernel: jax.Array, precision: str, tile: int) -> jax.Array:
    """SAME 3x3x3 convolution by Winograd, with a gradient of its own (see ``_same_vjp``)."""
    return _winograd_valid(_padded(x, kernel, "SAME"), kernel, precision, tile)


def _same_forward(x: jax.Array, kernel: jax.Array, precision: str, tile: int):
    return _winograd_same(x, kernel, precision, tile), (x, kernel)


def _same_vjp(precision: str, tile: int, residuals: tuple,
              g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gradients of a SAME convolution: the input's is the SAME convolution of ``g`` by
    the kernel flipped along x, y, z with C_in and C_out swapped, by Winograd too (2.25x
    fewer products than differentiating XLA's); the kernel's is the direct sum over
    voxels of input times ``g`` products (``_kernel_gradient``), so that an entry that is
    exactly zero through the direct convolution (a dead channel) stays exactly zero:
    through the Winograd transforms it would come out as rounding noise, which Adam's
    normalised step turns into an update."""
    x, kernel = residuals
    return (_winograd_same(g, _transposed(kernel), precision, tile),
            _kernel_gradient(x, g, precision).astype(kernel.dtype))


def _transposed(kernel: jax.Array) -> jax.Array:
    """The kernel of a SAME convolution's input gradient: flipped along x, y and z, with
    C_in and C_out swapped."""
    return jnp.flip(kernel, (0, 1, 2)).swapaxes(3, 4)


def _kernel_gradient(x: jax.Array, g: jax.Array, precision: str) -> jax.Array:
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
    dtype, arithmetic = _arithmetic(precision)
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

    if c_out < _MIN_MATMUL_CHANNELS:
        # Thin outputs (the last layer): each product is a long dot of two vectors,
        # summed in order, 4x XLA's error against float64 at 1024 rows. In chunks of 64
        # rows added pairwise, within block and across blocks, it stays within 2x.
        total = _pairwise_sum(jax.lax.map(chunked, jnp.arange(blocks)))
    else:
        total = jax.lax.fori_loop(0, blocks, accumulate,
                                  jnp.zeros((9, c_out, 3 * c_in), jnp.float32))
    total = total.swapaxes(1, 2)
    return total.reshape(3, 3, 3, c_in, c_out)


_winograd_same.defvjp(_same_forward, _same_vjp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_same(x: jax.Array, kernel: jax.Array, precision: str) -> jax.Array:
    """SAME 3x3x3 convolution by shifted row products (the first and last layers), with a
    gradient of its own: the input's by the same products (the SAME convolution of ``g``
    by the flipped, transposed kernel), the kernel's by ``_kernel_gradient``. Through
    autodiff, XLA transposed the folded taps of a whole batch element by element: 0.41 s
    of an 8.4 s train step (10L-64, 16 x 21^3) for the first layer alone."""
    x, kernel, arithmetic = _operands(x, kernel, precision)
    # One volume at a time: the batch axis may be split over devices.
    return jax.vmap(lambda v: _volume_matmul(v, kernel, arithmetic))(_padded(x, kernel, "SAME"))


def _matmul_forward(x: jax.Array, kernel: jax.Array, precision: str):
    return _matmul_same(x, kernel, precision), (x, kernel)


def _matmul_vjp(precision: str, residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    return (_matmul_same(g, _transposed(kernel), precision),
            _kernel_gradient(x, g, precision).astype(kernel.dtype))


_matmul_same.defvjp(_matmul_forward, _matmul_vjp)


def _pairwise_sum(a: jax.Array) -> jax.Array:
    """The sum over ``a``'s first axis, halving it in turn (rounding error grows with
    the log of its length, not the length)."""
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            a = jnp.concatenate([a, jnp.zeros_like(a[:1])])
        a = a[0::2] + a[1::2]
    return a[0]


def _padded(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    # Without the barrier XLA fuses the previous layer's bias and ReLU into the
    # row blocks' slices and the whole network runs slower than with XLA's
    # convolution (measured: 8.8 s against 4.9 s for 10L-64 on 64^3).
    if padding == "SAME":
        r = kernel.shape[0] // 2
        x = jnp.pad(x, ((0, 0), (r, r), (r, r), (r, r), (0, 0)))
    return jax.lax.optimization_barrier(x)


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


def relu_layer_bordered(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                        precision: str = "fp32", impl: str = "auto") -> jax.Array:
    """A hidden layer, ``relu(conv(x) + bias)``, between zero-bordered volumes.

    ``x``: float32 ``(B, X + 2, Y + 2, Z + 2, C_in)``, a volume with a border of
    zeros one voxel wide (SAME padding, already in place); ``kernel``
    ``(3, 3, 3, C_in, C_out)`` with ``winograd_applies``. Returns
    ``(B, X + 2, Y + 2, Z + 2, C_out)``, again with a zero border, so a chain of
    hidden layers never copies a volume to pad it: each block of the Winograd
    convolution adds the bias, applies the ReLU and writes into the interior.
    ``impl``: ``winograd4`` (what ``auto`` picks) or ``winograd`` (``exact``).
    """
    kernel = kernel.astype(jnp.float32)
    return jax.vmap(lambda v: _volume_winograd(v.astype(jnp.float32), kernel, precision,
                                               bias=bias.astype(jnp.float32),
                                               tile=_tile(impl, precision),
                                               volumes=x.shape[0]))(x)


def relu_layer_slab(x: jax.Array, kernel: jax.Array, bias: jax.Array, planes: jax.Array,
                    in_plane: jax.Array | None = None, precision: str = "fp32",
                    impl: str = "auto", prefix: jax.Array | None = None,
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
    chain, donated), written over instead of a fresh zero array (see ``_volume_winograd``).
    """
    return _volume_winograd(x.astype(jnp.float32), kernel.astype(jnp.float32), precision,
                            bias=bias.astype(jnp.float32), z_border=False, planes=planes,
                            in_plane=in_plane, tile=_tile(impl, precision), prefix=prefix,
                            scratch=scratch)


def _volume_winograd(x: jax.Array, kernel: jax.Array, precision: str,
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
    ``relu_layer_bordered``), without a z border ``(X, Y, Z - 2, C_out)`` when not
    ``z_border``, times the ``planes`` ``(Z - 2,)`` and ``in_plane``
    ``(X - 2, Y - 2, 1, 1)`` masks when given, after the z planes of ``prefix`` (see
    ``relu_layer_slab``); without ``bias``, the convolution ``(X - 2, Y - 2, Z - 2,
    C_out)``.
    """
    m = tile
    bt, g, at = _WINOGRAD[m]
    c_in, c_out = kernel.shape[3], kernel.shape[4]
    ox, oy, oz = (n - 2 for n in x.shape[:3])
    # A block: tx x ty tiles (m tx x m ty output columns), about WINOGRAD_BLOCK_ROWS
    # tiles by Z in all, so its operands stay in cache. Under ``vmap`` every iteration
    # takes one block of each volume: a batch of 16 21^3 patches ran a layer in 0.29 s
    # with 1024 tiles per volume, 0.21 s with 64 (F(2, 3), 2 CPU cores).
    target = WINOGRAD_BLOCK_ROWS / volumes
    ty, ny = _split(-(-oy // m), target / oz)
    tx, nx = _split(-(-ox // m), target / (ty * oz))
    # Odd sizes and partial last blocks: zeros beyond the volume, outputs dropped. Only
    # when needed: XLA copies the volume even for a pad of zero widths.
    extra = ((0, m * tx * nx - ox), (0, m * ty * ny - oy), (0, 0), (0, 0))
    if extra[0][1] or extra[1][1]:
        x = jnp.pad(x, extra)
        if in_plane is not None:
            in_plane = jnp.pad(in_plane, extra)
    g = jnp.asarray(g, jnp.float32)
    taps = jnp.einsum("pa,qb,abzio->pqzio", g, g, kernel,
                      precision=jax.lax.Precision.HIGHEST).reshape(m + 2, m + 2, 3 * c_in, c_out)
    dtype, arithmetic = _arithmetic(precision)
    taps = taps.astype(dtype)
    rows = tx * ty * oz
    border = 0 if bias is None else 1
    z_border = border if z_border else 0
    z_start = z_border if prefix is None else prefix.shape[2]  # of the output planes

    def block(i: jax.Array, j: jax.Array) -> jax.Array:
        part = jax.lax.dynamic_slice(x, (i * m * tx, j * m * ty, 0, 0),
                                     (m * tx + 2, m * ty + 2) + x.shape[2:])
        part = jnp.concatenate([part[:, :, c:c + oz] for c in range(3)], axis=3)
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
            y = jnp.stack([jnp.stack([sums[r, 0], sums[r, 1]]) for r in (0, 1)])
        else:
            # F(4, 3): 16 outputs of up to 25 products each; added elementwise, XLA fused
            # them into one loop that recomputed shared sums per output (2.3x slower).
            y = jnp.dot(jnp.asarray(np.kron(at, at), jnp.float32),
                        jnp.stack(products).reshape(len(products), -1),
                        precision=jax.lax.Precision.HIGHEST)
        y = y.reshape(m, m, tx, ty, oz, c_out)
        if bias is not None:
            y = jax.nn.relu(y + bias)
        y = y.transpose(2, 0, 3, 1, 4, 5)  # (tx, m, ty, m, Z, C_out)
        y = y.reshape(m * tx, m * ty, oz, c_out)
        if planes is not None:
            y = y * planes[:, None]
        if in_plane is not None:
            y = y * jax.lax.dynamic_slice(in_plane, (i * m * tx, j * m * ty, 0, 0),
                                          (m * tx, m * ty, 1, 1))
        return y

    def write(k: jax.Array, out: jax.Array) -> jax.Array:
        i, j = k // ny, k % ny
        return jax.lax.dynamic_update_slice(
            out, jax.checkpoint(block)(i, j),
            (border + i * m * tx, border + j * m * ty, z_start, 0))

    shape = (m * tx * nx + 2 * border, m * ty * ny + 2 * border, oz + 2 * z_border, c_out)
    if (scratch is not None and prefix is not None and not (extra[0][1] or extra[1][1])
            and scratch.shape == shape[:2] + (prefix.shape[2] + oz, c_out)):
        # The blocks write every interior voxel, the border is already zero: only the
        # prefix needs writing (a fresh buffer costs a pass over the whole slab).
        start = jax.lax.dynamic_update_slice(scratch.astype(jnp.float32),
                                             prefix.astype(jnp.float32), (0, 0, 0, 0))
    else:
        start = jnp.zeros(shape, jnp.float32)
        if prefix is not None:
            pad = [(0, s - p) for s, p in zip(shape[:2], prefix.shape[:2])]
            start = jnp.concatenate([jnp.pad(prefix.astype(jnp.float32), pad + [(0, 0)] * 2),
                                     start], axis=2)
    out = jax.lax.fori_loop(0, nx * ny, write, start)
    out = out[:ox + 2 * border, :oy + 2 * border]
    if border and m * tx * nx > ox:
        out = out.at[ox + 1:].set(0)
    if border and m * ty * ny > oy:
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
