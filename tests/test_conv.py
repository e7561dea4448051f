"""The two convolution formulations agree, at every precision, on every layer shape we use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srrecnn_jax import conv, model
from srrecnn_jax.config import recnn, srcnn3d


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kernel, c_in, c_out, padding, shape", [
    (3, 16, 16, "SAME", (2, 9, 10, 11)),   # SRReCNN3D hidden layer, batch of 2
    (3, 16, 8, "VALID", (1, 12, 9, 10)),   # a tile with its halo
    (1, 64, 32, "VALID", (1, 5, 6, 7)),    # SRCNN3D's 1x1x1 layer
    (5, 32, 16, "SAME", (1, 9, 9, 9)),
    (9, 8, 8, "VALID", (1, 11, 12, 13)),
    (3, 1, 16, "SAME", (1, 10, 9, 8)),     # first layer: one channel in
    (3, 16, 1, "SAME", (2, 10, 9, 8)),     # last layer: one channel out
    (9, 1, 64, "VALID", (1, 12, 12, 12)),  # SRCNN3D's first layer
])
def test_matmul_formulation_equals_xla_convolution(kernel, c_in, c_out, padding, shape):
    rng = np.random.default_rng(kernel)
    x = jnp.asarray(np.maximum(rng.normal(size=shape + (c_in,)), 0), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (kernel,) * 3 + (c_in, c_out)), jnp.float32)
    reference = conv.conv3d(x, w, padding, impl="xla")
    result = conv.conv3d(x, w, padding, impl="matmul")
    assert result.shape == reference.shape
    assert _relative(result, reference) < 2e-6  # float32 rounding, other summation order


def test_matmul_formulation_spans_several_row_blocks():
    # 24^3 padded to 26^3 = 17576 rows: three blocks of 8192, the last one partial.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((1, 24, 24, 24, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 3, 8, 8)), jnp.float32)
    assert _relative(conv.conv3d(x, w, "SAME", impl="matmul"),
                     conv.conv3d(x, w, "SAME", impl="xla")) < 2e-6


def test_whole_network_is_unchanged_by_the_formulation():
    cfg = recnn(layers=4, filters=16)
    params = model.init(jax.random.key(0), cfg)
    x = jnp.asarray(np.random.default_rng(2).random((1, 12, 13, 14, 1)), jnp.float32)
    assert _relative(model.apply(params, x, cfg, impl="matmul"),
                     model.apply(params, x, cfg, impl="xla")) < 2e-6


def test_bf16_is_close_to_fp32():
    # bfloat16 keeps 8 bits of mantissa: products of rounded operands, float32 sums.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((1, 10, 10, 10, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 3, 16, 16)), jnp.float32)
    exact = conv.conv3d(x, w, "SAME", "fp32", impl="xla")
    for impl in ("xla", "matmul"):
        approx = conv.conv3d(x, w, "SAME", "bf16", impl=impl)
        assert approx.dtype == jnp.float32
        assert 1e-5 < _relative(approx, exact) < 1e-2


def test_auto_uses_matmul_on_cpu():
    assert jax.default_backend() == "cpu"
    assert conv.pick("auto") == "matmul"
    assert conv.pick("xla") == "xla"


@pytest.mark.parametrize("bad", [{"precision": "fp16"}, {"impl": "cudnn"}])
def test_unknown_precision_or_formulation_is_refused(bad):
    x = jnp.zeros((1, 4, 4, 4, 8))
    w = jnp.zeros((3, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="must be one of"):
        conv.conv3d(x, w, "SAME", **bad)


def test_srcnn3d_layers_run_through_both_formulations():
    cfg = srcnn3d()
    params = model.init(jax.random.key(0), cfg)
    x = jnp.asarray(np.random.default_rng(4).random((1, 14, 14, 14, 1)), jnp.float32)
    assert _relative(model.apply(params, x, cfg, impl="matmul"),
                     model.apply(params, x, cfg, impl="xla")) < 2e-6
