"""The model as pure functions: parameter tree, initialisation, forward pass."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srrecnn_jax import config as configs
from srrecnn_jax import model
from srrecnn_jax.config import ModelConfig


def test_params_are_named_like_the_caffe_layers():
    params = model.init(jax.random.PRNGKey(0), configs.recnn(layers=4, filters=8))
    assert list(params) == ["conv1", "conv2", "conv3", "conv4"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 1, 8)  # (kx, ky, kz, in, out)
    assert params["conv4"]["kernel"].shape == (3, 3, 3, 8, 1)
    assert params["conv2"]["bias"].shape == (8,)


def test_init_is_he_fan_in_gaussian_with_zero_bias():
    """std sqrt(2 / (C_in k^3)), as the original's generate_net.py; to 3% on 110k draws."""
    params = model.init(jax.random.PRNGKey(1), configs.recnn(layers=3, filters=64))
    kernel = np.asarray(params["conv2"]["kernel"])
    assert abs(kernel.std() / np.sqrt(2 / (64 * 27)) - 1) < 0.03
    assert abs(kernel.mean()) < 3 * kernel.std() / np.sqrt(kernel.size)
    assert not np.any(np.asarray(params["conv2"]["bias"]))


def test_init_kernels_are_normal_draws_of_the_kernel_shape():
    """Each kernel is ``jax.random.normal(its key, its shape)`` times the He std, bitwise:
    the draw made flat (fast to compile) gives the numbers of the 5-D draw."""
    cfg = ModelConfig(kernels=(3, 1), filters=(2, 1))
    key = jax.random.PRNGKey(4)
    params = model.init(key, cfg)
    for (name, shapes), sub in zip(model.param_shapes(cfg).items(),
                                   jax.random.split(key, cfg.layers)):
        shape = shapes["kernel"]
        std = np.sqrt(2.0 / np.prod(shape[:4]))
        expected = jax.random.normal(sub, shape, jnp.float32) * np.float32(std)
        np.testing.assert_array_equal(params[name]["kernel"], expected, err_msg=name)


def test_parameter_count_of_the_published_10_layer_net():
    """1*64*27+64 + 8*(64*64*27+64) + 64*27+1 = 888,769."""
    params = jax.eval_shape(lambda key: model.init(key, configs.recnn()), jax.random.PRNGKey(0))
    assert model.param_count(params) == 888_769


def test_receptive_field():
    assert configs.recnn().receptive_field == 21
    assert configs.srcnn3d().receptive_field == 13  # 9 + 1 + 5 - 2


def test_forward_applies_bias_relu_between_layers_and_not_after_the_last():
    """Two 1^3 layers with hand-set weights: y = w2 * relu(w1 * x + b1) + b2."""
    params = {"conv1": {"kernel": jnp.full((1, 1, 1, 1, 1), 2.0), "bias": jnp.array([-1.0])},
              "conv2": {"kernel": jnp.full((1, 1, 1, 1, 1), -3.0), "bias": jnp.array([0.5])}}
    x = jnp.array([0.0, 0.25, 1.0, 2.0]).reshape(1, 4, 1, 1, 1)
    y = model.forward(params, x, "SAME")
    expected = -3.0 * np.maximum(2.0 * np.array([0, 0.25, 1, 2]) - 1, 0) + 0.5
    np.testing.assert_allclose(np.asarray(y).ravel(), expected, rtol=1e-6)


def test_same_padding_keeps_the_shape_and_residual_adds_channel_zero():
    cfg = configs.tiny(in_channels=2)
    params = model.init(jax.random.PRNGKey(0), cfg)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 7, 6, 5, 2))
    with_residual = model.apply(params, x, cfg)
    without = model.apply(params, x, dataclasses.replace(cfg, residual=False))
    assert with_residual.shape == (2, 7, 6, 5, 1)
    np.testing.assert_allclose(with_residual - without, x[..., :1], atol=1e-6)


def test_edge_valid_model_keeps_the_shape():
    """SRCNN3D pads the input by its receptive radius (edge) and runs valid convolutions."""
    cfg = ModelConfig(kernels=(5, 1, 3), filters=(4, 3, 1), residual=False, padding="edge_valid")
    params = model.init(jax.random.PRNGKey(0), cfg)
    assert model.apply(params, jnp.ones((1, 6, 7, 8, 1)), cfg).shape == (1, 6, 7, 8, 1)


def test_edge_valid_sees_replicated_borders():
    """A constant volume stays constant through an edge-padded net (no zero border)."""
    cfg = ModelConfig(kernels=(3, 3), filters=(2, 1), residual=False, padding="edge_valid")
    params = model.init(jax.random.PRNGKey(2), cfg)
    y = np.asarray(model.apply(params, jnp.full((1, 5, 5, 5, 1), 0.7), cfg))
    np.testing.assert_allclose(y, y.flat[0], rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(kernels=(3, 2), filters=(4, 1)),
                                    dict(kernels=(3,), filters=(4, 1)),
                                    dict(kernels=(3,), filters=(1,), padding="full")])
def test_config_rejects_impossible_architectures(kwargs):
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    cfg = configs.srcnn3d()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
