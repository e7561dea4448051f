"""Training settings: the model, the optimizer, the schedule and the loop, checked up front.

``TrainConfig`` holds a ``ModelConfig`` (any architecture: ReCNN, SRCNN3D),
an ``OptimizerConfig`` and a ``ScheduleConfig``; defaults are the original's
(pipeline doc §4). Settings are written flat, by name (every name is unique
across the parts): ``learning_rate = 1e-4``, ``max_iter = 900``. The
architecture is a ``model`` table (``ModelConfig`` fields) or the ReCNN
shorthand ``layers``, ``filters``, ``kernel``, ``in_channels``, ``residual``.
Sources, later ones winning: defaults (or the ``--init`` model's
architecture), a Caffe solver, a TOML/JSON file, ``key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from srrecnn_jax.caffe import parse_prototxt
from srrecnn_jax.checkpoint import RUN_CONFIG
from srrecnn_jax.config import ModelConfig, recnn
from srrecnn_jax.errors import SrrecnnError


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Adam or momentum SGD, with Caffe's weight decay and bias learning-rate multiplier."""

    solver: str = "adam"  # adam | sgd
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    bias_lr_mult: float = 0.1

    def __post_init__(self) -> None:
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"solver must be adam or sgd, not {self.solver!r}")
        _check_finite(self, "learning_rate", "beta1", "beta2", "epsilon", "momentum",
                      "weight_decay", "bias_lr_mult")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {self.epsilon}")
        for name in ("weight_decay", "bias_lr_mult"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Caffe's "multistep": ``learning_rate * gamma^k`` from the k-th of ``steps`` on
    (iterations count from 0); ``max_iter`` updates in all."""

    max_iter: int = 20000
    steps: tuple[int, ...] = (10000,)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if any(s < 0 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps must be increasing and >= 0, got {list(self.steps)}")
        _check_finite(self, "gamma")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on."""

    model: ModelConfig = dataclasses.field(default_factory=recnn)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    batch: int = 64
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
        if self.loss not in ("euclidean", "mean"):
            raise ValueError(f"loss must be euclidean or mean, not {self.loss!r}")
        for name in ("batch", "checkpoint_every", "log_every", "validate_every", "keep",
                     "patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2^32), got {self.seed}")
        _check_finite(self, "validation_scale", "patch_scales")
        if not self.patch_scales:
            raise ValueError("patch_scales needs at least one scale")
        for name in ("validation_scale", "patch_scales"):
            values = getattr(self, name)
            if not all(v > 0 for v in (values if isinstance(values, tuple) else (values,))):
                raise ValueError(f"{name} must be positive, got {values}")

    def to_dict(self) -> dict[str, Any]:
        """Flat settings plus a ``model`` table (the form ``config_from`` reads)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in _PARTS}
        for part in ("optimizer", "schedule"):
            values |= dataclasses.asdict(getattr(self, part))
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return {"model": self.model.to_dict(), **values}


_PARTS = ("model", "optimizer", "schedule")

#: The largest float32: every number setting must stay finite as float32 on the device.
_FLOAT32_MAX = 3.4028234663852886e38


def _check_finite(settings: Any, *names: str) -> None:
    """``ValueError`` naming the first of ``names`` with a NaN, an infinity or a value too
    large for float32 (a learning rate of 1e39 is infinite on the device)."""
    for name in names:
        value = getattr(settings, name)
        for v in value if isinstance(value, tuple) else (value,):
            if not abs(v) <= _FLOAT32_MAX:
                raise ValueError(f"{name} must be a finite float32 number, got {v}")


#: The ReCNN shorthand for the architecture.
MODEL_KEYS = ("layers", "filters", "kernel", "in_channels", "residual")


def _types(cls) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name not in _PARTS}


#: Each flat setting: the part that holds it (None: TrainConfig itself) and its type.
_SETTINGS: dict[str, tuple[str | None, str]] = {
    **{k: ("optimizer", t) for k, t in _types(OptimizerConfig).items()},
    **{k: ("schedule", t) for k, t in _types(ScheduleConfig).items()},
    **{k: (None, t) for k, t in _types(TrainConfig).items()},
}
_SHORTHAND_TYPES = {"layers": "int", "filters": "int", "kernel": "int", "in_channels": "int",
                    "residual": "bool"}


def _checked(name: str, value: Any, kind: str) -> Any:
    """``value`` if it is of the setting's type (ints for int, numbers for float ...)."""
    def scalar(v: Any, k: str) -> Any:
        if k == "int" and isinstance(v, int) and not isinstance(v, bool):
            return v
        if k == "float" and isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if k == "bool" and isinstance(v, bool):
            return v
        if k == "str" and isinstance(v, str):
            return v
        what = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a word"}[k]
        raise SrrecnnError(f"training setting {name}: expected {what}, got {v!r}")

    if kind.startswith("tuple"):
        inner = "int" if "int" in kind else "float"
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(scalar(v, inner) for v in items)
    return scalar(value, kind)


def config_from(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default ``TrainConfig()``) with the flat ``values`` set; every value is
    checked for its type and range, and unknown keys are an error."""
    base = base or TrainConfig()
    unknown = sorted(set(values) - set(_SETTINGS) - set(MODEL_KEYS) - {"model"})
    if unknown:
        raise SrrecnnError(f"unknown training setting(s): {', '.join(unknown)}")
    try:
        model = _model_from(values, base.model)
        parts: dict[str, dict[str, Any]] = {"optimizer": {}, "schedule": {}, "": {}}
        for key, value in values.items():
            if key in _SETTINGS:
                part, kind = _SETTINGS[key]
                parts[part or ""][key] = _checked(key, value, kind)
        return dataclasses.replace(
            base, model=model,
            optimizer=dataclasses.replace(base.optimizer, **parts["optimizer"]),
            schedule=dataclasses.replace(base.schedule, **parts["schedule"]), **parts[""])
    except (TypeError, ValueError) as e:
        raise SrrecnnError(f"training settings: {e}") from None


def _model_from(values: Mapping[str, Any], model: ModelConfig) -> ModelConfig:
    """The architecture: a ``model`` table, then the shorthand keys applied to it."""
    if "model" in values:
        if not isinstance(values["model"], Mapping):
            raise SrrecnnError("training setting model: expected a table of ModelConfig "
                               "fields")
        model = ModelConfig.from_dict(dict(values["model"]))
    short = {k: _checked(k, values[k], _SHORTHAND_TYPES[k]) for k in MODEL_KEYS if k in values}
    if {"layers", "filters", "kernel"} & short.keys():
        hidden = model.filters[0] if model.layers > 1 else 64
        model = recnn(short.get("layers", model.layers), short.get("filters", hidden),
                      short.get("kernel", model.kernels[0]), model.in_channels, model.residual)
    extra = {k: short[k] for k in ("in_channels", "residual") if k in short}
    return dataclasses.replace(model, **extra) if extra else model


def file_values(path: Path) -> dict[str, Any]:
    """The settings in a TOML or JSON file."""
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such config file") from None
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        raise SrrecnnError(f"{path}: not a valid config file ({e})") from None
    if not isinstance(values, dict):
        raise SrrecnnError(f"{path}: not a table of settings")
    return values


def load_config_file(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """A TOML or JSON file of settings applied to ``base``."""
    return config_from(file_values(path), base)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (``lr=1e-4``, ``steps=[100, 200]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SrrecnnError(f"{text!r} is not key=value", "overrides")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word, e.g. solver=sgd
    return key.strip(), parsed


def solver_values(path: Path) -> dict[str, Any]:
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
        values["steps"] = [int(s) for s in solver.get("stepvalue", [])]
    elif policy == "fixed":
        values["steps"] = []
    else:
        raise SrrecnnError(f"{path}: lr_policy {policy!r} is not supported (fixed, multistep)")
    mapping = {"base_lr": "learning_rate", "gamma": "gamma", "weight_decay": "weight_decay",
               "max_iter": "max_iter", "snapshot": "checkpoint_every", "display": "log_every",
               "delta": "epsilon"}
    for caffe_key, ours in mapping.items():
        if caffe_key in ("snapshot", "display") and not last(caffe_key):
            continue  # 0 means "never" in Caffe: keep our default interval
        if caffe_key in solver:
            values[ours] = (int if _SETTINGS[ours][1] == "int" else float)(last(caffe_key))
    if "momentum" in solver:
        values["beta1" if kind == "adam" else "momentum"] = float(last("momentum"))
    if "momentum2" in solver:
        values["beta2"] = float(last("momentum2"))
    return values


def from_caffe_solver(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """A Caffe solver's settings applied to ``base``."""
    return config_from(solver_values(path), base)


def read_run_config(run_dir: Path) -> TrainConfig:
    """The settings saved in a run folder."""
    path = run_dir / RUN_CONFIG
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SrrecnnError(f"{run_dir}: not a training run (no {RUN_CONFIG})") from None
    except ValueError as e:
        raise SrrecnnError(f"{path}: invalid ({e})") from None
    try:
        return config_from(values)
    except SrrecnnError as e:
        raise SrrecnnError(f"{path}: {e}") from None


def resolve(run_dir: Path, config_file: Path | None = None, caffe_solver: Path | None = None,
            overrides: Sequence[str] = (), init: ModelConfig | None = None) -> TrainConfig:
    """The settings of a run, before anything is written.

    A rerun with no new settings resumes with the saved ones. Otherwise:
    defaults (with ``init``'s architecture when fine-tuning), then the Caffe
    solver, the settings file, and the ``key=value`` overrides.
    """
    if (run_dir / RUN_CONFIG).exists() and not (config_file or caffe_solver or overrides):
        return read_run_config(run_dir)
    values: dict[str, Any] = {}
    if caffe_solver:
        values |= solver_values(caffe_solver)
    if config_file:
        values |= file_values(config_file)
    values |= dict(map(parse_override, overrides))
    return config_from(values, TrainConfig() if init is None else TrainConfig(model=init))
