"""Training: the original's solver and loss as optax, one jit-compiled data-parallel step.

The step is a pure function ``(state, batch) -> (state, metrics)``, compiled
once with the state donated; batches are split over a ``data`` mesh axis of
all local devices and the parameters replicated, so XLA inserts the gradient
all-reduce. Arrays are channels-last: data ``(B, P, P, P, C)``, label
``(B, P, P, P, 1)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from srrecnn_jax import model
from srrecnn_jax.caffe import parse_prototxt
from srrecnn_jax.config import ModelConfig, recnn
from srrecnn_jax.errors import SrrecnnError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; defaults are the original's (pipeline doc §4).

    ``steps`` are Caffe ``stepvalue``s: the learning rate is multiplied by
    ``gamma`` from that iteration on (iterations count from 0).
    """

    layers: int = 10
    filters: int = 64
    kernel: int = 3
    in_channels: int = 1
    residual: bool = True
    batch: int = 64
    solver: str = "adam"  # adam | sgd
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    gamma: float = 0.1
    steps: tuple[int, ...] = (10000,)
    max_iter: int = 20000
    bias_lr_mult: float = 0.1
    loss: str = "euclidean"  # euclidean: sum of squares / (2 batch) | mean
    seed: int = 0
    checkpoint_every: int = 1000
    keep: int = 3
    log_every: int = 100
    validate_every: int = 1000
    validation_scale: float = 2.0
    patch: int = 21  # on-the-fly patches from images (no HDF5)
    patch_scales: tuple[float, ...] = (2.0,)

    def __post_init__(self) -> None:
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"solver must be adam or sgd, not {self.solver!r}")
        if self.loss not in ("euclidean", "mean"):
            raise ValueError(f"loss must be euclidean or mean, not {self.loss!r}")
        if self.batch < 1 or self.max_iter < 0 or self.layers < 1:
            raise ValueError("batch and layers must be positive, max_iter non-negative")
        for name in ("checkpoint_every", "log_every", "validate_every", "keep", "patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def model_config(self) -> ModelConfig:
        return recnn(self.layers, self.filters, self.kernel, self.in_channels, self.residual)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"], d["patch_scales"] = list(self.steps), list(self.patch_scales)
        return d


def config_from(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A config from ``base`` with ``values`` replaced; unknown keys are an error."""
    base = base or TrainConfig()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SrrecnnError(f"unknown training setting(s): {', '.join(unknown)}")
    updates = dict(values)
    for key, cast in (("steps", int), ("patch_scales", float)):
        if key in updates:
            value = updates[key]
            updates[key] = tuple(cast(v) for v in (value if isinstance(value, list | tuple)
                                                    else [value]))
    try:
        return dataclasses.replace(base, **updates)
    except (TypeError, ValueError) as e:
        raise SrrecnnError(f"training settings: {e}") from None


def load_config_file(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """A TOML or JSON file of settings (flat keys as in ``TrainConfig``)."""
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such config file") from None
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        raise SrrecnnError(f"{path}: not a valid config file ({e})") from None
    return config_from(values, base)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (``lr=1e-4``, ``steps=[100, 200]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SrrecnnError(f"--set: {text!r} is not key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word, e.g. solver=sgd
    return key.strip(), parsed


def from_caffe_solver(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """Settings from a Caffe ``solver.prototxt`` (type, base_lr, momentum(2), delta, ...)."""
    try:
        solver = parse_prototxt(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such solver file") from None
    except (OSError, ValueError, IndexError) as e:
        raise SrrecnnError(f"{path}: not a readable solver prototxt ({e})") from None

    def last(key: str, default: Any = None) -> Any:
        return solver.get(key, [default])[-1]

    kind = str(last("type", last("solver_type", "SGD"))).lower()
    if kind not in ("adam", "sgd"):
        raise SrrecnnError(f"{path}: solver type {kind!r} is not supported (Adam or SGD)")
    policy = str(last("lr_policy", "fixed"))
    values: dict[str, Any] = {"solver": kind}
    if policy == "multistep":
        values["steps"] = tuple(int(s) for s in solver.get("stepvalue", []))
    elif policy == "fixed":
        values["steps"] = ()
    else:
        raise SrrecnnError(f"{path}: lr_policy {policy!r} is not supported (fixed, multistep)")
    mapping = {"base_lr": "learning_rate", "gamma": "gamma", "weight_decay": "weight_decay",
               "max_iter": "max_iter", "snapshot": "checkpoint_every", "display": "log_every",
               "delta": "epsilon"}
    for caffe_key, ours in mapping.items():
        if caffe_key in ("snapshot", "display") and not last(caffe_key):
            continue  # 0 means "never" in Caffe: keep our default interval
        if caffe_key in solver:
            values[ours] = type(getattr(TrainConfig, ours, 0.0))(last(caffe_key))
    if "momentum" in solver:
        values["beta1" if kind == "adam" else "momentum"] = float(last("momentum"))
    if "momentum2" in solver:
        values["beta2"] = float(last("momentum2"))
    return config_from(values, base)


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Caffe's "multistep": ``lr * gamma^k`` with k the steps already reached (iter >= step).

    optax counts updates from 0 like Caffe's ``iter_`` and scales from the
    boundary on (count >= boundary), so the boundaries are Caffe's stepvalues.
    """
    return optax.piecewise_constant_schedule(
        config.learning_rate, {s: config.gamma for s in config.steps})


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Weight decay (added to the gradient, as Caffe), Adam or momentum SGD, the schedule,
    and the bias learning-rate multiplier (Caffe's ``lr_mult: 0.1`` on biases).

    Note: Caffe puts Adam's epsilon after its bias correction and folds the
    learning rate into SGD's momentum; optax does neither, which differs only
    in the epsilon term and right after a learning-rate step.
    """
    schedule = learning_rate_schedule(config)
    if config.solver == "adam":
        core = optax.scale_by_adam(b1=config.beta1, b2=config.beta2, eps=config.epsilon)
    else:
        core = optax.trace(decay=config.momentum)
    multiplier = optax.multi_transform(
        {"kernel": optax.identity(), "bias": optax.scale(config.bias_lr_mult)},
        lambda params: {layer: {leaf: leaf for leaf in leaves}
                        for layer, leaves in params.items()})
    parts = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
    return optax.chain(*parts, core, optax.scale_by_schedule(lambda n: -schedule(n)), multiplier)


def loss_value(prediction: jax.Array, label: jax.Array, kind: str) -> jax.Array:
    """Caffe's EuclideanLoss ``sum((p - l)^2) / (2 B)``, or the mean squared error."""
    squares = jnp.square(prediction - label)
    if kind == "euclidean":
        return jnp.sum(squares) / (2 * prediction.shape[0])
    return jnp.mean(squares)


def init_state(key: jax.Array, config: TrainConfig, params: model.Params | None = None) -> dict:
    """``{"params", "opt_state", "step"}``; ``params`` to fine-tune from, else He init."""
    params = model.init(key, config.model_config()) if params is None else params
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return {"params": params, "opt_state": make_optimizer(config).init(params),
            "step": jnp.zeros((), jnp.int32)}


def train_step(state: dict, batch: dict, config: TrainConfig) -> tuple[dict, dict]:
    """One update. ``batch``: ``data (B, P, P, P, C)``, ``label (B, P, P, P, 1)``.

    The network runs with its residual (the skip of the interpolated input),
    as at inference; the published Caffe nets learned the same function with
    the skip applied outside the net. Raises nothing; ``metrics["finite"]``
    flags a non-finite loss or gradient for the caller to stop on.
    """
    model_config = config.model_config()

    def objective(params):
        # XLA's convolution, also on CPU, where the Winograd one's gradient is 1.7x
        # faster (8.6 s against 14.4 s, 10L-64, 16 x 21^3): its weight gradients are
        # the direct convolution's, so an entry that is exactly zero stays zero. Through
        # the Winograd transforms it comes out as rounding noise, which Adam's
        # normalised step turns into an update (seen in the two-device test).
        prediction = model.apply(params, batch["data"], model_config, impl="xla")
        return loss_value(prediction, batch["label"], config.loss)

    loss, grads = jax.value_and_grad(objective)(state["params"])
    updates, opt_state = make_optimizer(config).update(grads, state["opt_state"],
                                                       state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "learning_rate": learning_rate_schedule(config)(state["step"]),
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def compile_step(config: TrainConfig, mesh: jax.sharding.Mesh | None = None):
    """``train_step`` jitted for ``config``: state donated; with a mesh, batch split
    over its ``data`` axis and state replicated."""
    step = functools.partial(train_step, config=config)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return jax.jit(step, donate_argnums=0, in_shardings=(replicated, split),
                   out_shardings=(replicated, replicated))
