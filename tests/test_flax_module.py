"""``srrecnn_jax.SRReCNN3D``: a Flax module with the plain parameter tree of ``model`` and
its output bit for bit, for the release's three architectures."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srrecnn_jax import SRReCNN3D, model
from srrecnn_jax import config as configs

# The release's three networks: SRReCNN3D 10L-64 (mono), its multimodal form (T1 + T2
# channels), and SRCNN3D 9-1-5 (edge-padded input, valid convolutions, no residual).
ARCHITECTURES = {
    "SRReCNN3D 10L-64": configs.recnn(),
    "MultiSRReCNN3D 10L-64": configs.recnn(in_channels=2),
    "SRCNN3D 9-1-5": configs.srcnn3d(),
}


def brain_like(shape: tuple[int, ...], seed: int) -> jax.Array:
    """A smooth positive volume with texture, ``(1, X, Y, Z, C)`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:4]],
                                indexing="ij"), -1)
    blob = np.exp(-2 * (grid ** 2).sum(-1))[None, ..., None]
    return jnp.asarray(np.clip(blob + 0.05 * rng.standard_normal(shape), 0, 1), jnp.float32)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_init_gives_the_plain_parameter_tree(name):
    """``init`` yields ``{"params": {"conv1": {"kernel", "bias"}, ...}}`` with the shapes
    and dtypes of ``model.init``: a Flax tree and a plain tree are interchangeable."""
    config = ARCHITECTURES[name]
    x = jnp.zeros((1, 8, 8, 8, config.in_channels), jnp.float32)
    variables = jax.eval_shape(SRReCNN3D(config).init, jax.random.PRNGKey(0), x)
    plain = jax.eval_shape(lambda k: model.init(k, config), jax.random.PRNGKey(0))
    assert list(variables) == ["params"]
    assert (jax.tree_util.tree_structure(variables["params"])
            == jax.tree_util.tree_structure(plain))
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), variables["params"]) == \
        jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), plain)


def test_init_is_he_fan_in_gaussian_with_zero_bias():
    """The module's own init: kernel std sqrt(2 / (C_in k^3)) to 3% on 110k draws, zero
    biases, as ``model.init``."""
    net = SRReCNN3D(configs.recnn(layers=3, filters=64))
    params = net.init(jax.random.PRNGKey(1), jnp.zeros((1, 5, 5, 5, 1)))["params"]
    kernel = np.asarray(params["conv2"]["kernel"])
    assert abs(kernel.std() / np.sqrt(2 / (64 * 27)) - 1) < 0.03
    assert not np.any(np.asarray(params["conv2"]["bias"]))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_apply_equals_the_pure_function_bitwise(name):
    """``SRReCNN3D(config).apply({"params": p}, x) == model.apply(p, x, config)``, every
    bit, jit-compiled both, with parameters from ``model.init`` (as loaded weights are)."""
    config = ARCHITECTURES[name]
    params = model.init(jax.random.PRNGKey(2), config)
    x = brain_like((1, 14, 12, 10, config.in_channels), seed=3)
    ours = jax.jit(SRReCNN3D(config).apply)({"params": params}, x)
    pure = jax.jit(lambda p, v: model.apply(p, v, config))(params, x)
    assert ours.shape == (1, 14, 12, 10, 1)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(pure))


def test_the_module_composes_in_a_users_flax_model():
    """The docs' example: SRReCNN3D as a submodule of a user's module (here followed by a
    learned intensity scale); the network's parameters sit under its own name, and
    gradients reach both."""

    class Restore(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = SRReCNN3D(configs.recnn(layers=3, filters=8), differentiable=True,
                          name="sr")(x)
            return y * self.param("gain", nn.initializers.ones, ())

    net = Restore()
    x = brain_like((1, 9, 9, 9, 1), seed=4)
    variables = net.init(jax.random.PRNGKey(0), x)
    assert sorted(variables["params"]) == ["gain", "sr"]
    assert sorted(variables["params"]["sr"]) == ["conv1", "conv2", "conv3"]
    grads = jax.grad(lambda v: jnp.mean(net.apply(v, x) ** 2))(variables)
    assert float(jnp.abs(grads["params"]["gain"])) > 0
    assert float(jnp.abs(grads["params"]["sr"]["conv1"]["kernel"]).sum()) > 0
