"""Gradients of the CPU's Winograd convolution (the training path): as accurate as XLA's
own against float64, and exactly zero where the direct convolution's are."""

from __future__ import annotations

import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import same_conv_float64

from srrecnn_jax import conv, model
from srrecnn_jax.config import recnn
from srrecnn_jax.gradients import GRADIENT_BLOCK_ROWS
from srrecnn_jax.images import to_array


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def kernel_gradient_float64(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """d<conv(x, w), g>/dw in float64: each tap's shifted inputs times ``g``, summed."""
    b, nx, ny, nz, _ = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
    taps = [np.einsum("bxyzi,bxyzo->io", padded[:, i:i + nx, j:j + ny, k:k + nz],
                      g.astype(np.float64)) for i, j, k in np.ndindex(3, 3, 3)]
    return np.stack(taps).reshape(3, 3, 3, x.shape[4], g.shape[4])


@pytest.fixture(scope="module")
def anatomical_path_module():
    """nibabel's real 2 mm T1, once per module (conftest's fixture is per test)."""
    path = importlib.resources.files("nibabel") / "tests/data/anatomical.nii"
    if not path.is_file():
        pytest.skip("nibabel's test data is not installed")
    return path


@pytest.fixture(scope="module")
def hidden_batch(anatomical_path_module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real patch batch as a hidden layer sees it: four 9^3 patches of nibabel's T1
    (normalised) through a random 1 -> 16 first layer and a ReLU; a 16 -> 16 kernel;
    the loss gradient ``g`` of a random target."""
    t1 = to_array(sitk.ReadImage(str(anatomical_path_module)))
    patches = np.stack([t1[a:a + 9, 10:19, 8:17] for a in (4, 10, 16, 22)])[..., None]
    patches = patches / patches.max()
    rng = np.random.default_rng(0)
    first = rng.normal(0, 0.5, (3, 3, 3, 1, 16)).astype(np.float32)
    x = np.maximum(same_conv_float64(patches, first), 0).astype(np.float32)
    w = rng.normal(0, 0.1, (3, 3, 3, 16, 16)).astype(np.float32)
    g = rng.normal(size=x.shape[:4] + (16,)).astype(np.float32)
    return x, w, g


def gradients(x, w, g, algorithm: str):
    _, pull = jax.vjp(lambda x, w: conv.conv3d(x, w, "SAME", algorithm=algorithm), jnp.asarray(x),
                      jnp.asarray(w))
    return pull(jnp.asarray(g))


def test_winograd_input_gradient_is_as_accurate_as_xlas(hidden_batch):
    """Against float64 (the SAME convolution of g by the flipped, transposed kernel),
    within twice the error of XLA's float32 gradient (plus 1e-7 of the range)."""
    x, w, g = hidden_batch
    exact = same_conv_float64(g, np.flip(w, (0, 1, 2)).swapaxes(3, 4))
    direct = relative(gradients(x, w, g, "xla")[0], exact)
    assert relative(gradients(x, w, g, "winograd")[0], exact) < 2 * direct + 1e-7


def test_winograd_kernel_gradient_is_as_accurate_as_xlas(hidden_batch):
    x, w, g = hidden_batch
    exact = kernel_gradient_float64(x, g)
    direct = relative(gradients(x, w, g, "xla")[1], exact)
    assert relative(gradients(x, w, g, "winograd")[1], exact) < 2 * direct + 1e-7


def test_kernel_gradient_over_several_row_blocks_is_as_accurate_as_xlas(
        anatomical_path_module):
    """Three 16 x 17 x 18 crops of a real T1 (uneven sides, 20520 padded rows: many
    blocks of ``GRADIENT_BLOCK_ROWS``, the last partial), 8 -> 8 channels: every
    tap and channel against float64, within twice XLA's own error (plus 1e-7 of the
    range)."""
    t1 = to_array(sitk.ReadImage(str(anatomical_path_module)))
    crops = np.stack([t1[a:a + 16, 8:25, 4:22] for a in (2, 9, 16)])[..., None] / t1.max()
    rng = np.random.default_rng(3)
    x = np.maximum(same_conv_float64(crops, rng.normal(0, 0.5, (3, 3, 3, 1, 8))), 0)
    x = x.astype(np.float32)
    w = rng.normal(0, 0.1, (3, 3, 3, 8, 8)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    rows = 3 * 18 * 19 * 20
    assert rows > 3 * GRADIENT_BLOCK_ROWS and rows % GRADIENT_BLOCK_ROWS
    exact = kernel_gradient_float64(x, g)
    direct = relative(gradients(x, w, g, "xla")[1], exact)
    assert relative(gradients(x, w, g, "winograd")[1], exact) < 2 * direct + 1e-7


@pytest.mark.parametrize("c_in, c_out", [(1, 16), (16, 1)])
def test_thin_layer_gradients_are_as_accurate_as_xlas(hidden_batch, c_in, c_out):
    """The first (1 -> F) and last (F -> 1) layers run as row products with a gradient of
    their own: input and kernel gradients against float64, within twice XLA's error
    (plus 1e-7 of the range)."""
    x, _, _ = hidden_batch
    rng = np.random.default_rng(c_in)
    x = x[..., :c_in]
    w = rng.normal(0, 0.1, (3, 3, 3, c_in, c_out)).astype(np.float32)
    g = rng.normal(size=x.shape[:4] + (c_out,)).astype(np.float32)
    exact = (same_conv_float64(g, np.flip(w, (0, 1, 2)).swapaxes(3, 4)),
             kernel_gradient_float64(x, g))
    for ours, xlas, reference in zip(gradients(x, w, g, "exact"), gradients(x, w, g, "xla"),
                                     exact):
        assert relative(ours, reference) < 2 * relative(xlas, reference) + 1e-7


def test_kernel_gradient_of_a_dead_channel_is_exactly_zero(hidden_batch):
    """An input channel that is zero everywhere gets a kernel gradient of exactly 0 (not
    rounding noise, which Adam's normalised step would turn into updates)."""
    x, w, g = hidden_batch
    x = x.copy()
    x[..., 5] = 0.0
    dk = np.asarray(gradients(x, w, g, "winograd")[1])
    assert np.count_nonzero(dk[:, :, :, 5]) == 0
    assert np.count_nonzero(dk[:, :, :, 4]) > 0


def test_training_network_gradient_equals_xlas():
    """The network as the train step runs it (``differentiable``: plain layers, Winograd
    ones with their own gradient) against XLA's, every parameter (float32 order)."""
    cfg = recnn(layers=3, filters=8)
    params = model.init(jax.random.key(1), cfg)
    x = jnp.asarray(np.random.default_rng(8).random((2, 7, 8, 9, 1)), jnp.float32)

    def grads(algorithm, differentiable):
        return jax.grad(lambda p: jnp.sum(model.apply(
            p, x, cfg, algorithm=algorithm, differentiable=differentiable) ** 2))(params)

    for a, b in zip(jax.tree.leaves(grads("winograd", True)), jax.tree.leaves(grads("xla", False))):
        assert relative(a, b) < 1e-5
