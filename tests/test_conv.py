"""The convolution algorithms agree, at every precision, on every layer shape we use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import same_conv_float64

from srrecnn_jax import conv, model, winograd
from srrecnn_jax.config import recnn, srcnn3d


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# Relative to the output's maximum: float32 rounding in another summation order; F(4, 3)'s
# transforms (entries up to 8 and 1/24) round more.
TOLERANCE = {"matmul": 2e-6, "winograd": 2e-6, "winograd4": 1e-5}


@pytest.mark.parametrize("kernel, c_in, c_out, padding, shape", [
    (3, 16, 16, "SAME", (2, 9, 10, 11)),   # SRReCNN3D hidden layer, batch of 2
    (3, 16, 8, "VALID", (1, 12, 9, 10)),   # a tile with its halo
    (1, 64, 32, "VALID", (1, 5, 6, 7)),    # SRCNN3D's 1x1x1 layer
    (5, 32, 16, "SAME", (1, 9, 9, 9)),
    (9, 8, 8, "VALID", (1, 11, 12, 13)),
    (3, 1, 16, "SAME", (1, 10, 9, 8)),     # first layer: one channel in
    (3, 16, 1, "SAME", (2, 10, 9, 8)),     # last layer: one channel out
    # SRCNN3D's first layer, on the input test_srcnn3d_layers_run_through_the_cpu_algorithm
    # gives it (14^3 edge-padded by 6): its slow compilation is shared.
    (9, 1, 64, "VALID", (1, 26, 26, 26)),
])
@pytest.mark.parametrize("algorithm", ["matmul", "winograd", "winograd4"])
def test_cpu_algorithms_equal_xla_convolution(kernel, c_in, c_out, padding, shape, algorithm):
    rng = np.random.default_rng(kernel)
    x = jnp.asarray(np.maximum(rng.normal(size=shape + (c_in,)), 0), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (kernel,) * 3 + (c_in, c_out)), jnp.float32)
    reference = conv.conv3d(x, w, padding, algorithm="xla")
    result = conv.conv3d(x, w, padding, algorithm=algorithm)
    assert result.shape == reference.shape
    assert _relative(result, reference) < TOLERANCE[algorithm]


@pytest.mark.parametrize("shape", [(1, 16, 16, 16), (2, 9, 7, 5), (1, 3, 4, 2)])
def test_winograd_is_as_accurate_as_the_direct_convolution(shape):
    # Against a float64 reference, Winograd F(2, 3) stays within twice the error of
    # XLA's direct float32 convolution: its transforms (0, +-1, 1/2) add a few roundings.
    # Odd and tiny shapes take the padded partial tiles.
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=shape + (16,)), 0).astype(np.float32)
    w = rng.normal(0, 0.1, (3, 3, 3, 16, 16)).astype(np.float32)
    exact = same_conv_float64(x, w)
    direct = _relative(conv.conv3d(x, w, "SAME", algorithm="xla"), exact)
    by_winograd = _relative(conv.conv3d(x, w, "SAME", algorithm="winograd"), exact)
    assert by_winograd < 2 * direct + 1e-7


@pytest.mark.parametrize("algorithm, shape", [("winograd", (40, 30, 12)),
                                         ("winograd4", (70, 62, 18))])
def test_winograd_blocks_cover_a_volume_larger_than_one_block(algorithm, shape):
    # Blocks of about WINOGRAD_BLOCK_ROWS tiles by z planes, the last ones partial in x and
    # y (sizes not multiples of the tile).
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.random((1, *shape, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 3, 8, 8)), jnp.float32)
    tile = conv.WINOGRADS[algorithm]
    assert np.prod(shape) > 3 * tile ** 2 * winograd.WINOGRAD_BLOCK_ROWS  # over three blocks
    assert _relative(conv.conv3d(x, w, "SAME", algorithm=algorithm),
                     conv.conv3d(x, w, "SAME", algorithm="xla")) < TOLERANCE[algorithm]


@pytest.mark.parametrize("algorithm", ["exact", "auto"])
@pytest.mark.parametrize("shape", [(1, 8, 8, 8), (2, 7, 6, 5)])
def test_bordered_layer_is_a_padded_relu_convolution_with_a_zero_border(shape, algorithm):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.random(shape + (8,)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 3, 8, 16)), jnp.float32)
    b = jnp.asarray(rng.normal(0, 0.1, 16), jnp.float32)
    bordered = conv.relu_layer_bordered(jnp.pad(x, ((0, 0),) + ((1, 1),) * 3 + ((0, 0),)), w, b,
                                        algorithm=algorithm)
    expected = jax.nn.relu(conv.conv3d(x, w, "SAME", algorithm="xla") + b)
    assert bordered.shape == (shape[0], shape[1] + 2, shape[2] + 2, shape[3] + 2, 16)
    tolerance = TOLERANCE[conv.resolve_algorithm(algorithm)]
    assert _relative(bordered[:, 1:-1, 1:-1, 1:-1], expected) < tolerance
    interior = np.zeros(bordered.shape, bool)
    interior[:, 1:-1, 1:-1, 1:-1] = True
    assert not np.asarray(bordered)[~interior].any()


def test_matmul_algorithm_spans_several_row_blocks():
    # 24^3 padded to 26^3 = 17576 rows: three blocks of 8192, the last one partial.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((1, 24, 24, 24, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 3, 8, 8)), jnp.float32)
    assert _relative(conv.conv3d(x, w, "SAME", algorithm="matmul"),
                     conv.conv3d(x, w, "SAME", algorithm="xla")) < 2e-6


@pytest.mark.parametrize("algorithm", ["matmul", "winograd", "winograd4"])
def test_whole_network_is_unchanged_by_the_algorithm(algorithm):
    # winograd: the hidden layers keep their zero border between them (relu_layer_bordered).
    cfg = recnn(layers=4, filters=16)
    params = model.init(jax.random.key(0), cfg)
    x = jnp.asarray(np.random.default_rng(2).random((1, 12, 13, 14, 1)), jnp.float32)
    assert _relative(model.apply(params, x, cfg, algorithm=algorithm),
                     model.apply(params, x, cfg, algorithm="xla")) < TOLERANCE[algorithm]


def test_winograd_network_gradient_equals_xla_gradient():
    cfg = recnn(layers=3, filters=8)
    params = model.init(jax.random.key(1), cfg)
    x = jnp.asarray(np.random.default_rng(8).random((2, 7, 8, 9, 1)), jnp.float32)

    def grads(algorithm):  # jit-compiled, as the training step is
        return jax.jit(jax.grad(
            lambda p: jnp.sum(model.apply(p, x, cfg, algorithm=algorithm) ** 2)))(params)

    for a, b in zip(jax.tree.leaves(grads("winograd")), jax.tree.leaves(grads("xla"))):
        assert _relative(a, b) < 1e-5  # sums over every voxel: float32 order differences


def test_bf16_is_close_to_fp32():
    # bfloat16 keeps 8 bits of mantissa: products of rounded operands, float32 sums.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((1, 10, 10, 10, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 3, 16, 16)), jnp.float32)
    exact = conv.conv3d(x, w, "SAME", "fp32", algorithm="xla")
    for algorithm in ("xla", "matmul", "winograd", "winograd4"):
        approx = conv.conv3d(x, w, "SAME", "bf16", algorithm=algorithm)
        assert approx.dtype == jnp.float32
        assert 1e-5 < _relative(approx, exact) < 1e-2


def test_auto_uses_winograd_f43_and_exact_f23_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU rule; accelerators use XLA's convolution")
    assert conv.resolve_algorithm("auto") == "winograd4"
    assert conv.resolve_algorithm("exact") == "winograd"
    assert conv.resolve_algorithm("xla") == "xla"


@pytest.mark.parametrize("bad", [{"precision": "fp16"}, {"algorithm": "cudnn"}])
def test_unknown_precision_or_algorithm_is_refused(bad):
    x = jnp.zeros((1, 4, 4, 4, 8))
    w = jnp.zeros((3, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="must be one of"):
        conv.conv3d(x, w, "SAME", **bad)


def test_srcnn3d_layers_run_through_the_cpu_algorithm():
    # 14^3, edge-padded by 6: the first layer's input is test_cpu_algorithms_...'s 26^3.
    cfg = srcnn3d()
    params = model.init(jax.random.key(0), cfg)
    x = jnp.asarray(np.random.default_rng(4).random((1, 14, 14, 14, 1)), jnp.float32)
    assert _relative(model.apply(params, x, cfg, algorithm="matmul"),
                     model.apply(params, x, cfg, algorithm="xla")) < 2e-6
