"""The solvers against steps computed by hand in float64 (Caffe's update rules), and ``keep``.

A two-leaf parameter tree (one kernel, one bias) and a fixed sequence of
gradients go through ``make_optimizer``; the expected parameters follow the
formulas written out here. Tolerance: 1e-6 relative (float32 arithmetic).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage

from srrecnn_jax.checkpoint import checkpoint_steps
from srrecnn_jax.train.config import config_from
from srrecnn_jax.train.data import RandomPatches
from srrecnn_jax.train.loop import train
from srrecnn_jax.train.step import make_optimizer

KERNEL0 = np.array([0.5, -1.0, 2.0])
BIAS0 = np.array([0.25])
GRADS = [(np.array([0.1, -0.2, 0.3]), np.array([1.0])),
         (np.array([0.4, 0.1, -0.5]), np.array([-2.0])),
         (np.array([-0.3, 0.2, 0.1]), np.array([0.5]))]


def run_optimizer(**settings) -> tuple[np.ndarray, np.ndarray]:
    """The kernel and bias after one update per entry of GRADS."""
    optimizer = make_optimizer(config_from(settings))
    params = {"conv1": {"kernel": jnp.asarray(KERNEL0, jnp.float32),
                        "bias": jnp.asarray(BIAS0, jnp.float32)}}
    state = optimizer.init(params)
    for kernel_grad, bias_grad in GRADS:
        grads = {"conv1": {"kernel": jnp.asarray(kernel_grad, jnp.float32),
                           "bias": jnp.asarray(bias_grad, jnp.float32)}}
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["conv1"]["kernel"]), np.asarray(params["conv1"]["bias"])


def by_hand(update, lr: float, bias_lr_mult: float = 0.1, weight_decay: float = 0.0,
            steps: tuple[int, ...] = (), gamma: float = 0.1):
    """Apply ``update(leaf_state, gradient, rate) -> (step, leaf_state)`` leaf by leaf, with
    Caffe's weight decay (gradient + decay * weight), multistep rate and bias multiplier."""
    result = []
    for leaf, (value, mult) in enumerate(((KERNEL0, 1.0), (BIAS0, bias_lr_mult))):
        value, state = value.astype(np.float64), {}
        for t, grads in enumerate(GRADS):
            rate = lr * gamma ** sum(t >= s for s in steps) * mult
            gradient = grads[leaf] + weight_decay * value
            step, state = update(state, gradient, rate, t + 1)
            value = value - step
        result.append(value)
    return result


def adam(b1: float, b2: float, eps: float):
    def update(state, g, rate, t):
        m = b1 * state.get("m", 0) + (1 - b1) * g
        v = b2 * state.get("v", 0) + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        return rate * m_hat / (np.sqrt(v_hat) + eps), {"m": m, "v": v}
    return update


def caffe_sgd(momentum: float):
    """Caffe's SGD: history = momentum * history + rate * gradient; weight -= history.
    With a constant rate this equals optax's trace-then-scale."""
    def update(state, g, rate, t):
        history = momentum * state.get("h", 0) + rate * g
        return history, {"h": history}
    return update


def assert_close(actual: tuple[np.ndarray, np.ndarray], expected) -> None:
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)


def test_adam_three_steps():
    settings = dict(solver="adam", learning_rate=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8,
                    steps=[])
    assert_close(run_optimizer(**settings), by_hand(adam(0.9, 0.999, 1e-8), 0.01))


def test_adam_other_betas_and_epsilon():
    """A large epsilon and small beta2 make every term of the formula count."""
    settings = dict(solver="adam", learning_rate=0.05, beta1=0.5, beta2=0.8, epsilon=0.1,
                    steps=[])
    assert_close(run_optimizer(**settings), by_hand(adam(0.5, 0.8, 0.1), 0.05))


def test_momentum_sgd_three_steps():
    settings = dict(solver="sgd", learning_rate=0.1, momentum=0.9, steps=[])
    assert_close(run_optimizer(**settings), by_hand(caffe_sgd(0.9), 0.1))


def test_weight_decay_is_added_to_the_gradient():
    settings = dict(solver="sgd", learning_rate=0.1, momentum=0.5, weight_decay=0.01, steps=[])
    expected = by_hand(caffe_sgd(0.5), 0.1, weight_decay=0.01)
    assert_close(run_optimizer(**settings), expected)
    without = by_hand(caffe_sgd(0.5), 0.1)
    assert not np.allclose(expected[0], without[0], rtol=1e-6)


def test_multistep_schedule_inside_adam():
    """The rate falls by gamma from update 2 on (counted from 0, as Caffe's iter)."""
    settings = dict(solver="adam", learning_rate=0.01, steps=[2], gamma=0.1)
    assert_close(run_optimizer(**settings),
                 by_hand(adam(0.9, 0.999, 1e-8), 0.01, steps=(2,), gamma=0.1))


@pytest.mark.parametrize("mult", [0.0, 1.0])
def test_bias_lr_mult_scales_only_the_bias(mult):
    settings = dict(solver="sgd", learning_rate=0.1, momentum=0.0, bias_lr_mult=mult, steps=[])
    assert_close(run_optimizer(**settings), by_hand(caffe_sgd(0.0), 0.1, bias_lr_mult=mult))


def test_keep_retains_the_newest_checkpoints(tmp_path):
    """checkpoint_every 1 and keep 2 over 4 steps: the folders of steps 3 and 4 remain."""
    rng = np.random.default_rng(0)
    volumes = [scipy.ndimage.gaussian_filter(rng.random((16, 16, 16)), 1.5).astype(np.float32)]
    config = config_from(dict(layers=3, filters=4, batch=2, max_iter=4, checkpoint_every=1,
                              keep=2, log_every=1, steps=[]))
    train(config, RandomPatches(volumes, [2], patch=9), tmp_path / "run")
    assert checkpoint_steps(tmp_path / "run") == [3, 4]
