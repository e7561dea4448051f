"""The train step: the original's solver and loss as optax, one jit-compiled data-parallel step.

The step is a pure function ``(state, batch) -> (state, metrics)``, compiled
once with the state donated; batches are split over a ``data`` mesh axis of
all local devices and the parameters replicated, so XLA inserts the gradient
all-reduce. Arrays are channels-last: data ``(B, P, P, P, C)``, label
``(B, P, P, P, 1)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from srrecnn_jax import model, parallel
from srrecnn_jax.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Caffe's "multistep": ``lr * gamma^k`` with k the steps already reached (iter >= step).

    optax counts updates from 0 like Caffe's ``iter_`` and scales from the
    boundary on (count >= boundary), so the boundaries are Caffe's stepvalues.
    """
    schedule = config.schedule
    return optax.piecewise_constant_schedule(
        config.optimizer.learning_rate, {s: schedule.gamma for s in schedule.steps})


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Weight decay (added to the gradient, as Caffe), Adam or momentum SGD, the schedule,
    and the bias learning-rate multiplier (Caffe's ``lr_mult: 0.1`` on biases).

    Note: Caffe puts Adam's epsilon after its bias correction and folds the
    learning rate into SGD's momentum; optax does neither, which differs only
    in the epsilon term and right after a learning-rate step.
    """
    schedule = learning_rate_schedule(config)
    settings = config.optimizer
    if settings.solver == "adam":
        core = optax.scale_by_adam(b1=settings.beta1, b2=settings.beta2, eps=settings.epsilon)
    else:
        core = optax.trace(decay=settings.momentum)
    multiplier = optax.multi_transform(
        {"kernel": optax.identity(), "bias": optax.scale(settings.bias_lr_mult)},
        lambda params: {layer: {leaf: leaf for leaf in leaves}
                        for layer, leaves in params.items()})
    parts = ([optax.add_decayed_weights(settings.weight_decay)] if settings.weight_decay
             else [])
    return optax.chain(*parts, core, optax.scale_by_schedule(lambda n: -schedule(n)), multiplier)


def loss_value(prediction: jax.Array, label: jax.Array, kind: str) -> jax.Array:
    """Caffe's EuclideanLoss ``sum((p - l)^2) / (2 B)``, or the mean squared error."""
    squares = jnp.square(prediction - label)
    if kind == "euclidean":
        return jnp.sum(squares) / (2 * prediction.shape[0])
    return jnp.mean(squares)


def init_state(key: jax.Array, config: TrainConfig, params: model.Params | None = None) -> dict:
    """``{"params", "opt_state", "step"}``; ``params`` to fine-tune from, else He init."""
    params = model.init(key, config.model) if params is None else params
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return {"params": params, "opt_state": make_optimizer(config).init(params),
            "step": jnp.zeros((), jnp.int32)}


def train_step(state: dict, batch: dict, config: TrainConfig) -> tuple[dict, dict]:
    """One update. ``batch``: ``data (B, P, P, P, C)``, ``label (B, P, P, P, 1)``.

    The network runs with its residual (the skip of the interpolated input),
    as at inference; the published Caffe nets learned the same function with
    the skip applied outside the net. Raises nothing; ``metrics["finite"]``
    flags a non-finite loss, gradient or updated parameter (a finite gradient times
    a large learning rate can overflow) for the caller to stop on, before it saves
    the state.
    """
    def objective(params, data, label):
        # On CPU the hidden layers' forward pass and input gradients run by Winograd and
        # every kernel gradient by the direct formula as row products, so an entry that
        # is exactly zero there stays zero (``gradients.kernel_gradient``); GPUs run XLA's
        # convolution.
        # ``exact``: F(2, 3), whose gradients stay within twice XLA's float32 error.
        prediction = model.apply(params, data, config.model, algorithm="exact",
                                 differentiable=True)
        return loss_value(prediction, label, config.loss)

    loss, grads = _value_and_grad(objective, state["params"], batch["data"], batch["label"],
                                  micro_batches(config))
    updates, opt_state = make_optimizer(config).update(grads, state["opt_state"],
                                                       state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf))
                                       for leaf in jax.tree_util.tree_leaves(params)]))
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "learning_rate": learning_rate_schedule(config)(state["step"]),
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


#: Patches per micro-batch on CPU when ``micro_batch`` is 0 (automatic).
CPU_MICRO_BATCH = 16


def micro_batches(config: TrainConfig) -> int:
    """How many micro-batches the step sums its gradient over (see ``micro_batch``)."""
    size = config.micro_batch
    if not size:
        cpu = jax.default_backend() == "cpu" and config.batch % CPU_MICRO_BATCH == 0
        size = CPU_MICRO_BATCH if cpu else config.batch
    return config.batch // size


def _value_and_grad(objective, params, data: jax.Array, label: jax.Array, count: int):
    """The loss and gradient of ``objective(params, data, label)`` over the batch, as the
    mean over ``count`` equal micro-batches (both losses are means over the batch).

    Micro-batch k holds items k, k + count, k + 2 count ...: a batch split over devices
    in contiguous blocks splits each micro-batch the same way, so no patch moves."""
    if count == 1:
        return jax.value_and_grad(objective)(params, data, label)

    def split(a: jax.Array) -> jax.Array:  # (B, ...) -> (count, B / count, ...)
        return jnp.moveaxis(a.reshape((a.shape[0] // count, count) + a.shape[1:]), 1, 0)

    def accumulate(total, pair):
        value = jax.value_and_grad(objective)(params, *pair)
        return jax.tree_util.tree_map(jnp.add, total, value), None

    zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(accumulate, zero, (split(data), split(label)))
    return jax.tree_util.tree_map(lambda t: t / count, total)


def compile_step(config: TrainConfig, mesh: jax.sharding.Mesh | None = None):
    """``train_step`` jitted for ``config``: state donated; with a mesh, batch split
    over its ``data`` axis and state replicated."""
    step = functools.partial(train_step, config=config)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    replicated, split = parallel.mesh_shardings(mesh)
    return jax.jit(step, donate_argnums=0, in_shardings=(replicated, split),
                   out_shardings=(replicated, replicated))
